"""What survives that Table E.1-1 does not name (default deny), and which attributes must
stay present for the output to remain a valid instance.

Rules for attributes absent from the table, applied at every depth:

* private (odd group), curve (50xx) and overlay (60xx) groups: handled by the table's
  pattern rows, never here;
* not in the data dictionary: removed;
* numeric, coded and temporal VRs (US SS UL SL FL FD DS IS AT UV SV CS AS DA DT TM UI):
  kept - they cannot carry a name (a stray ID in them is what the verification gate is for);
  DA/DT are shifted and UI replaced like everything else;
* free text (PN LO SH ST LT UT UC UR), AE and binary (OB OW OF OD OL OV UN): removed unless
  named in ``TEXT_ALLOW`` / ``BINARY_ALLOW``, or cleaned (``C``) if in ``REQUIRED_TEXT``;
* sequences: kept and walked (their leaves are filtered by these same rules) unless in
  ``SEQUENCE_DENY``.
"""

from __future__ import annotations

from pydicom.datadict import tag_for_keyword


def _tags(keywords: str) -> frozenset[int]:
    tags = set()
    for kw in keywords.split():
        tag = tag_for_keyword(kw)
        if tag is None:
            raise KeyError(f"not a DICOM keyword: {kw}")
        tags.add(int(tag))
    return frozenset(tags)


#: Type of the attribute in the IODs we expect, for the combined codes of Table E.1-1
#: (``table.resolve_code``). "1": must be present with a value; "2": present, may be empty.
#: Attributes not listed are treated as Type 3 (removed).
REQUIRED_TYPE: dict[str, str] = {
    "ContentDate": "1",  # Type 1 in SR documents, 2C in images
    "ContentTime": "1",
    "AcquisitionDateTime": "1",  # Type 1C in enhanced multi-frame images
    "DeviceSerialNumber": "1",  # Type 1 in Enhanced General Equipment
    "PatientID": "2",
    "ContrastBolusAgent": "2",
    "InstructionPerformedDateTime": "2",
    "AcquisitionContextSequence": "2",  # SR, waveforms
    "ContentCreatorName": "2",  # presentation states
    "RTPlanDate": "2",
    "RTPlanTime": "2",
    "TreatmentMachineName": "2",  # RT beams
    "ReviewerName": "2",
    "OperatorsName": "2",  # Type 2 in the RT Series module
    # Type 2 in the Derivation Image macro / 1C in enhanced images; after the walk they hold
    # only pseudonymous UIDs and codes.
    "SourceImageSequence": "2",
    "ReferencedImageSequence": "2",
    "ReferencedPerformedProcedureStepSequence": "2",  # Type 2 in SR Document Series
}

#: Rows we add to Table E.1-1, in its format: free text the table does not list but that
#: must stay present for validity, with the option that may clean it.
SUPPLEMENTARY_ROWS: tuple[dict[str, str], ...] = (
    # Type 1C in SR TEXT content items; the table's Content Sequence row is D / C.
    {"tag": "(0040,A160)", "keyword": "TextValue", "basic": "D", "clean_structured_content": "C"},
)

#: Type 1/2 free-text attributes outside the table: kept through ``C`` (emptied if they
#: contain an identifier of the instance or an NHS-number/postcode/phone pattern) so the
#: output stays valid. Descriptive labels of the acquisition, not of the patient.
REQUIRED_TEXT: frozenset[int] = _tags(
    """
    PositionReferenceIndicator ContentDescription SegmentLabel SegmentAlgorithmName
    RTPlanName ROIObservationLabel
    """
)

#: Free-text attributes outside the table that are technical, not about the patient.
TEXT_ALLOW: frozenset[int] = _tags(
    """
    Manufacturer ManufacturerModelName SoftwareVersions
    CodeValue CodingSchemeDesignator CodingSchemeVersion CodeMeaning LongCodeValue
    URNCodeValue CodingSchemeName CodingSchemeResponsibleOrganization
    ContextIdentifier MappingResource MappingResourceName
    ConvolutionKernel WindowCenterWidthExplanation LUTExplanation RescaleType
    SequenceName PulseSequenceName ReceiveCoilName TransmitCoilName FilterType
    ReconstructionMethod DimensionDescriptionLabel FrameLabel
    BeamName SourceManufacturer SourceIsotopeName ApplicatorID BlockTrayID BlockName
    WedgeID CompensatorID BolusID MaterialID FixationDeviceLabel ShieldingDeviceLabel
    DoseReferenceDescription FractionGroupDescription ToleranceTableLabel
    BeamLimitingDeviceAngle RadiationMachineName PrimaryDosimeterUnit
    ROIGenerationAlgorithm DoseComment
    Units RadiopharmaceuticalRoute Radiopharmaceutical
    """
)

#: Binary attributes outside the table that hold image or LUT data, not text.
BINARY_ALLOW: frozenset[int] = _tags(
    """
    PixelData FloatPixelData DoubleFloatPixelData ExtendedOffsetTable
    ExtendedOffsetTableLengths LUTData RedPaletteColorLookupTableData
    GreenPaletteColorLookupTableData BluePaletteColorLookupTableData
    AlphaPaletteColorLookupTableData SegmentedRedPaletteColorLookupTableData
    SegmentedGreenPaletteColorLookupTableData SegmentedBluePaletteColorLookupTableData
    SegmentedAlphaPaletteColorLookupTableData RedPaletteColorLookupTableDescriptor
    GreenPaletteColorLookupTableDescriptor BluePaletteColorLookupTableDescriptor
    LargestImagePixelValue SmallestImagePixelValue LargestPixelValueInSeries
    SmallestPixelValueInSeries PixelPaddingValue PixelPaddingRangeLimit
    LargestImagePixelValueInPlane SmallestImagePixelValueInPlane
    RealWorldValueLUTData WaveformData ChannelMinimumValue ChannelMaximumValue
    WaveformPaddingValue ContourData DoseGridScaling
    """
)

#: Sequences outside the table that are removed rather than walked.
SEQUENCE_DENY: frozenset[int] = _tags(
    """
    IconImageSequence
    """
)

#: UI attributes that name a DICOM-defined thing (class, syntax, scheme), never an instance;
#: kept even when their value is outside the DICOM root (private SOP classes).
KEEP_UID: frozenset[int] = _tags(
    """
    SOPClassUID ReferencedSOPClassUID MediaStorageSOPClassUID TransferSyntaxUID
    AffectedSOPClassUID RequestedSOPClassUID ReferencedSOPClassUIDInFile
    ImplementationClassUID CodingSchemeUID ContextGroupExtensionCreatorUID
    ContextUID MappingResourceUID RelatedGeneralSOPClassUID OriginalSpecializedSOPClassUID
    ReferencedTransferSyntaxUIDInFile SOPClassesInStudy
    """
)

#: The DICOM UID root: UIDs under it are defined by the standard, not by a device.
DICOM_UID_ROOT = "1.2.840.10008."

TEXT_VRS = frozenset({"PN", "LO", "SH", "ST", "LT", "UT", "UC", "UR", "AE"})
BINARY_VRS = frozenset({"OB", "OW", "OF", "OD", "OL", "OV", "UN", "OB or OW"})
