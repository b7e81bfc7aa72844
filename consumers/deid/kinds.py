"""Which source attributes identify the patient, as what kind, and the words that do not.

A *kind* names what was found (``person_name``, ``nhs_number``, ...), never the value: the
verification gate holds an instance back as ``verification_failed:<kind>``.
"""

from __future__ import annotations

#: Words of our own receipts and dummies: a name token equal to one of them is not evidence
#: of a leak (the patient "Mr Basic" would otherwise be held back forever).
OWN_VOCABULARY = frozenset(
    """anonymous removed smartbox deid basic application confidentiality profile retain
    longitudinal temporal information modified dates option patient characteristics safe
    private full uids device identity institution clean descriptors structured content
    graphics annex key yes urn dcm pixel pixels data masked mask overlay bits cleared""".split()
)

# Which source attributes are identifying, and as what kind (keyword -> kind).
ID_KEYWORDS = {
    "PatientID": "patient_id",
    "OtherPatientIDs": "other_patient_id",
    "AccessionNumber": "accession_number",
    "StudyID": "study_id",
    "MedicalRecordLocator": "patient_id",
    "InstitutionName": "institution",
    "InstitutionalDepartmentName": "institution",
    "StationName": "station_name",
    "DeviceSerialNumber": "device_serial",
    "AdmissionID": "patient_id",
    "PerformedProcedureStepID": "study_id",
    "RequestedProcedureID": "study_id",
    "FillerOrderNumberImagingServiceRequest": "accession_number",
    "PlacerOrderNumberImagingServiceRequest": "accession_number",
}
ADDRESS_KEYWORDS = {
    "PatientAddress": "address",
    "InstitutionAddress": "institution_address",
    "ReferringPhysicianAddress": "address",
    "PersonAddress": "address",
}
PHONE_KEYWORDS = {
    "PatientTelephoneNumbers": "phone_number",
    "ReferringPhysicianTelephoneNumbers": "phone_number",
    "PersonTelephoneNumbers": "phone_number",
}
UID_KEYWORDS = (
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "FrameOfReferenceUID",
    "MediaStorageSOPInstanceUID",
)
#: Every kind the scanners can return (each has its ``Reason.verification(kind)``).
KINDS = frozenset(
    {*ID_KEYWORDS.values(), *ADDRESS_KEYWORDS.values(), *PHONE_KEYWORDS.values()}
    | {"person_name", "nhs_number", "birth_date", "original_uid", "identifier"}
    | {"nhs_number_pattern", "postcode_pattern", "phone_pattern", "name_vocabulary"}
)

ADDRESS_STOPWORDS = frozenset(
    """road street avenue lane close drive house flat court place square crescent way
    hill park green view gardens north south east west upper lower united kingdom""".split()
)
