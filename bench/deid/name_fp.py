"""False positives of the name vocabulary (``consumers/deid/names.py``): how often text that
names nobody is taken for a person's name.

    .venv/bin/python bench/deid/name_fp.py [--show]

1. **pydicom's bundled files**: every free-text value (LO SH ST LT UT UC; not PN, which name
   people by definition) of every DICOM file shipped in pydicom's data directory, read as it
   is - far more text than any profile keeps (descriptions, comments, protocol names, code
   meanings, private text). Then the whole de-identifier on the same files with
   ``unknown_names = "hold"`` against ``"off"``: the instances held back because of the
   vocabulary alone.
2. **synthetic descriptions**: study / series / protocol descriptions, code meanings and
   kernels as scanners and RIS write them, generated from the vocabulary of radiology
   requests below (modalities, body parts, laterality, contrast, phases, MR sequences, vendor
   kernels and models, view names), every combination of a template.

``--show`` prints the flagged values (pydicom's test files are synthetic: no patient data).
"""

from __future__ import annotations

import argparse
import io
import itertools
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

FREE_TEXT = {"LO", "SH", "ST", "LT", "UT", "UC"}

MODALITIES = ["CT", "MR", "MRI", "XR", "DX", "CR", "US", "NM", "PET CT", "CTA", "MRA", "DR"]
PARTS = [
    "CHEST",
    "HEAD",
    "BRAIN",
    "ABDOMEN",
    "PELVIS",
    "ABDO PELVIS",
    "CHEST ABDOMEN PELVIS",
    "CAP",
    "NECK",
    "C SPINE",
    "L SPINE",
    "T SPINE",
    "WHOLE SPINE",
    "KNEE",
    "SHOULDER",
    "HIP",
    "WRIST",
    "ANKLE",
    "FOOT",
    "HAND",
    "ELBOW",
    "LIVER",
    "PANCREAS",
    "KIDNEYS",
    "KUB",
    "SINUSES",
    "ORBITS",
    "IAMS",
    "TMJ",
    "PROSTATE",
    "BREAST",
    "HEART",
    "CORONARY ARTERIES",
    "AORTA",
    "CAROTIDS",
    "CIRCLE OF WILLIS",
    "PULMONARY ANGIOGRAM",
    "COLON",
    "SMALL BOWEL",
    "FACIAL BONES",
    "SKULL",
    "PITUITARY",
    "TEMPORAL BONES",
    "FEMUR",
    "TIBIA FIBULA",
    "HUMERUS",
    "SCAPHOID",
]
MODIFIERS = [
    "",
    "WITH CONTRAST",
    "WITHOUT CONTRAST",
    "W/O CONTRAST",
    "+C",
    "-C",
    "PRE AND POST",
    "ARTERIAL PHASE",
    "PORTAL VENOUS",
    "DELAYED",
    "LEFT",
    "RIGHT",
    "BILATERAL",
    "LT",
    "RT",
    "AP",
    "PA",
    "LAT",
    "AP AND LATERAL",
    "OBLIQUE",
    "ERECT",
    "SUPINE",
    "PORTABLE",
    "TRAUMA",
    "ROUTINE",
    "FOLLOW UP",
    "STAGING",
    "HIGH RESOLUTION",
    "LOW DOSE",
    "?PE",
    "?FRACTURE",
    "STROKE PROTOCOL",
    "PERFUSION",
    "WITH IV CONTRAST",
    "ORAL CONTRAST",
    "OMNIPAQUE 350",
    "VISIPAQUE 320",
    "GADOVIST",
    "DOTAREM 10ML",
    "BUSCOPAN",
    "TOWNE VIEW",
    "WATERS VIEW",
    "JUDET VIEWS",
    "SKYLINE",
    "MERCHANT VIEW",
    "FROG LEG",
    "DIXON",
    "AGATSTON SCORE",
]
SERIES = [
    "Topogram 0.6 T20s",
    "Thorax 1.0 B70f",
    "Abdomen 3.0 I30f 3",
    "Head 5.0 H31s",
    "Recon 2",
    "AXIAL 1.25",
    "AX 5mm STND",
    "BONE 1.25",
    "LUNG 1.25",
    "SOFT TISSUE",
    "MIP 10mm",
    "MPR Cor",
    "MPR Sag",
    "Dose Report",
    "Patient Protocol",
    "SCOUT",
    "Localizer",
    "t1_mprage_sag_p2_iso",
    "t2_tse_tra",
    "t2_flair_dark-fl_tra",
    "ep2d_diff_b1000",
    "ADC",
    "AX T2 FLAIR",
    "SAG T1",
    "COR STIR",
    "AX DWI",
    "SWI",
    "TOF 3D multi-slab",
    "T1 VIBE fs",
    "HASTE cor",
    "TRUFI",
    "BLADE",
    "PROPELLER",
    "3D CUBE",
    "LAVA-Flex",
    "FIESTA",
    "eTHRIVE",
    "sBTFE",
    "mDIXON",
    "B30f",
    "B45f",
    "I26f",
    "Br40d",
    "Hr64h",
    "STANDARD",
    "BONEPLUS",
    "DETAIL",
    "LUNG",
    "SOFT",
    "EDGE",
    "FC01",
    "FC13",
    "FC51",
    "YA",
    "YB",
    "UB",
    "IMR1",
    "iDose 4",
    "ASIR 40%",
    "ADMIRE 3",
    "SAFIRE 3",
    "AIDR 3D",
    "DLIR",
]
MODELS = [
    "SOMATOM Definition Flash",
    "SOMATOM Force",
    "SOMATOM go.Top",
    "Biograph Vision",
    "MAGNETOM Skyra",
    "MAGNETOM Prisma",
    "MAGNETOM Vida",
    "Avanto",
    "Aera",
    "Discovery CT750 HD",
    "Revolution CT",
    "LightSpeed VCT",
    "Optima CT660",
    "SIGNA Premier",
    "SIGNA Artist",
    "Aquilion ONE",
    "Aquilion Prime",
    "Vantage Orian",
    "Ingenia 3.0T",
    "Achieva",
    "Brilliance 64",
    "iCT 256",
    "IQon Spectral CT",
    "DigitalDiagnost",
    "Ysio Max",
    "DRX-Evolution",
    "CXDI",
    "Definium 6000",
    "FCR Capsula",
    "Carestream DRX-1",
]
MAKERS = [
    "SIEMENS",
    "GE MEDICAL SYSTEMS",
    "Philips",
    "TOSHIBA",
    "Canon Medical Systems",
    "FUJIFILM Corporation",
    "Carestream Health",
    "Agfa",
    "Hologic",
    "Elekta",
    "Varian",
]


def synthetic() -> list[str]:
    """Descriptions as a RIS, a scanner and a protocol library write them."""
    texts = {f"{m} {p} {x}".strip() for m, p, x in itertools.product(MODALITIES, PARTS, MODIFIERS)}
    texts |= {f"{p} {s}" for p, s in itertools.product(PARTS, SERIES)}
    texts |= set(SERIES) | set(MODELS) | set(MAKERS)
    texts |= {f"{p.title()} {x.lower()}".strip() for p, x in itertools.product(PARTS, MODIFIERS)}
    return sorted(texts)


def bundled_files() -> list[Path]:
    import pydicom.data

    root = Path(pydicom.data.__file__).parent
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in ("", ".dcm"))


def free_text(path: Path) -> list[str]:
    import pydicom

    try:
        ds = pydicom.dcmread(path, force=True)
        values = []
        for elem in ds.iterall():
            if elem.VR in FREE_TEXT and elem.value:
                items = elem.value if isinstance(elem.value, list | tuple) else [elem.value]
                values += [str(v) for v in items if str(v).strip()]
        return values
    except Exception:  # noqa: BLE001 - some bundled files are deliberately broken
        return []


def pipeline_holds(paths: list[Path]) -> tuple[int, int, Counter[str]]:
    """(files de-identified with the vocabulary off, of them held back by it when on)."""
    sys.path.insert(0, str(ROOT / "tests" / "unit" / "deid"))
    import pydicom
    from corpus import normalise  # the bundled files made to pass the other gates

    from consumers.deid import Deidentifier, DeidPolicy, PseudonymKey

    key = PseudonymKey(b"name-fp-bench-0123456789", "k1")
    off = Deidentifier(key, DeidPolicy(trust_code="RTK", unknown_names="off"))
    hold = Deidentifier(key, DeidPolicy(trust_code="RTK", unknown_names="hold"))
    released, held, reasons = 0, 0, Counter[str]()
    for path in paths:
        try:
            ds = normalise(pydicom.dcmread(path, force=True))
            buf = io.BytesIO()
            ds.save_as(buf, enforce_file_format=True)
        except Exception:  # noqa: BLE001
            continue
        if not off.process(buf.getvalue()).ok:
            continue
        released += 1
        result = hold.process(buf.getvalue())
        if not result.ok:
            held += 1
            reasons[str(result.reason)] += 1
    return released, held, reasons


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--show", action="store_true", help="print the flagged values")
    args = p.parse_args()
    from consumers.deid.names import find_name

    paths = bundled_files()
    values = [(path.name, v) for path in paths for v in free_text(path)]
    flagged = [(name, v, find_name(v)) for name, v in values if find_name(v)]
    files = {name for name, _v in values}
    print(
        f"pydicom bundled files: {len(files)} files with free text, {len(values)} values; "
        f"flagged {len(flagged)} values ({100 * len(flagged) / max(len(values), 1):.2f} %) "
        f"in {len({n for n, _v, _r in flagged})} files; by rule "
        f"{dict(Counter(r for _n, _v, r in flagged))}"
    )
    if args.show:
        for name, v, rule in flagged:
            print(f"  {rule:12} {name}: {v[:70]!r}")
    released, held, reasons = pipeline_holds(paths)
    print(
        f"pipeline on the bundled files: {released} released with the vocabulary off; "
        f"{held} of them held back with unknown_names = hold ({dict(reasons)})"
    )
    texts = synthetic()
    hits = [(t, find_name(t)) for t in texts if find_name(t)]
    print(
        f"synthetic descriptions: {len(texts)} distinct; flagged {len(hits)} "
        f"({100 * len(hits) / len(texts):.3f} %)"
    )
    if args.show:
        for t, rule in hits:
            print(f"  {rule:12} {t!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
