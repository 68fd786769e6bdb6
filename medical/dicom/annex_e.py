"""The attributes of DICOM PS3.15 Annex E, Table E.1-1 (Application Level Confidentiality
Profile Attributes): the action of the Basic Profile for each, and which attributes three
options change.

Actions (PS3.15 E.1.1): ``D`` replace with a non-zero-length dummy value; ``Z`` replace
with a zero-length value (or a dummy); ``X`` remove; ``U`` replace a UID with another,
consistent within the set of instances; ``C`` clean (keep a value of similar meaning with
identifying information removed); compound codes such as ``X/Z`` or ``X/Z/D`` let the
implementation choose by the attribute's Type. This module resolves them as follows
(see ``resolve``): ``X/...`` -> remove, ``Z/D`` -> zero length, ``X/Z/U*`` (a sequence
of references) -> keep the items and apply the table inside them, so UIDs referenced
there are replaced consistently and references between objects (SEG -> image) survive.

Keywords are those of the DICOM data dictionary; ``tag_for_keyword`` turns them into tags.
The table is written here from the standard (facts), as a keyword -> action mapping.
Repeating groups (overlays 60xx, curves 50xx) are handled by ``repeating_group_action``.
"""

from __future__ import annotations

from pydicom.datadict import tag_for_keyword

#: Basic Profile action per attribute (PS3.15 Table E.1-1, "Basic Prof." column).
_TABLE = """
X: AcquisitionComments AcquisitionContextSequence AcquisitionDeviceProcessingDescription AdditionalPatientHistory
   AdmissionID AdmittingDate AdmittingDiagnosesCodeSequence AdmittingDiagnosesDescription AdmittingTime
   AuthorObserverSequence Allergies BranchOfService CassetteID CommentsOnThePerformedProcedureStep
   ConfidentialityConstraintOnPatientDataDescription ConsultingPhysicianIdentificationSequence ConsultingPhysicianName
   ContentCreatorIdentificationCodeSequence ContentSequence CountryOfResidence CurrentObserverTrial CurrentPatientLocation
   CurveDate CurveTime DataSetTrailingPadding DerivationDescription DeviceDescription DeviceLabel DigitalSignaturesSequence
   DigitalSignatureUID DischargeDiagnosisDescription DistributionAddress DistributionName
   EncryptedAttributesSequence EthnicGroup FillerOrderNumberImagingServiceRequest FrameComments GantryID GeneratorID
   HL7StructuredDocumentReferenceSequence HumanPerformerName HumanPerformerOrganization IconImageSequence
   IdentifyingComments ImageComments ImagingServiceRequestComments InstitutionAddress InstitutionalDepartmentName
   InstitutionalDepartmentTypeCodeSequence InsurancePlanIdentification InterpretationApproverSequence
   InterpretationAuthor InterpretationDiagnosisDescription InterpretationID InterpretationIDIssuer
   InterpretationRecorder InterpretationText InterpretationTranscriber IssuerOfAccessionNumberSequence
   IssuerOfAdmissionIDSequence IssuerOfPatientID IssuerOfServiceEpisodeIDSequence LastMenstrualDate
   LongDeviceDescription MACParametersSequence MedicalAlerts MedicalRecordLocator MilitaryRank
   ModifiedAttributesSequence ModifiedImageDescription ModifyingDeviceID NameOfPhysiciansReadingStudy NetworkID
   Occupation OperatorIdentificationSequence OrderCallbackPhoneNumber OrderCallbackTelecomInformation OrderEnteredBy
   OrderEntererLocation OriginalAttributesSequence OtherPatientIDs OtherPatientIDsSequence OtherPatientNames
   ParticipantSequence PatientAddress PatientAge PatientAlternativeCalendar PatientBirthDateInAlternativeCalendar
   PatientBirthName PatientBirthTime PatientComments PatientDeathDateInAlternativeCalendar PatientInstitutionResidence
   PatientInsurancePlanCodeSequence PatientMotherBirthName PatientPrimaryLanguageCodeSequence
   PatientReligiousPreference PatientSize PatientState PatientTelecomInformation PatientTelephoneNumbers
   PatientTransportArrangements PatientWeight PerformedLocation PerformedProcedureStepDescription
   PerformedProcedureStepEndDate PerformedProcedureStepEndTime PerformedProcedureStepID
   PerformedProcedureStepStartDate PerformedProcedureStepStartTime PerformedStationAETitle
   PerformedStationGeographicLocationCodeSequence PerformedStationName PerformedStationNameCodeSequence
   PerformingPhysicianIdentificationSequence PerformingPhysicianName PersonAddress PersonTelephoneNumbers
   PhysiciansOfRecord PhysiciansOfRecordIdentificationSequence PhysiciansReadingStudyIdentificationSequence PlateID
   PlacerOrderNumberImagingServiceRequest PregnancyStatus ReasonForStudy ReasonForTheRequestedProcedure
   ReasonForVisit ReferencedDigitalSignatureSequence ReferencedPatientPhotoSequence ReferencedPatientSequence
   ReferencedPerformedProcedureStepSequence ReferencedSOPInstanceMACSequence ReferencedStudySequence
   ReferringPhysicianAddress ReferringPhysicianIdentificationSequence ReferringPhysicianTelephoneNumbers
   RegionOfResidence RequestAttributesSequence RequestedContrastAgent RequestedProcedureComments
   RequestedProcedureDescription RequestedProcedureID RequestingPhysician RequestingService ResponsibleOrganization
   ResponsiblePerson ResultsComments ResultsID ResultsIDIssuer ReviewerName RouteOfAdmissions
   ScheduledHumanPerformersSequence ScheduledPatientInstitutionResidence ScheduledPerformingPhysicianIdentificationSequence
   ScheduledPerformingPhysicianName ScheduledProcedureStepDescription ScheduledProcedureStepEndDate
   ScheduledProcedureStepEndTime ScheduledProcedureStepID ScheduledProcedureStepLocation ScheduledProcedureStepStartDate
   ScheduledProcedureStepStartTime ScheduledStationAETitle ScheduledStationGeographicLocationCodeSequence
   ScheduledStationName ScheduledStationNameCodeSequence ScheduledStudyLocation ScheduledStudyLocationAETitle
   SeriesDescription ServiceEpisodeDescription ServiceEpisodeID SmokingStatus SourcePatientGroupIdentificationSequence
   SourceSerialNumber SpecialNeeds StudyComments StudyDescription StudyIDIssuer TextComments UDISequence
   VerifyingOrganization VisitComments OverlayDate OverlayTime ModifiedImageDate ModifiedImageTime
   StudyArrivalDate StudyArrivalTime StudyCompletionDate StudyCompletionTime StudyVerifiedDate StudyVerifiedTime
   StudyReadDate StudyReadTime ScheduledStudyStartDate ScheduledStudyStartTime ScheduledStudyStopDate
   ScheduledStudyStopTime GroupOfPatientsIdentificationSequence ActualHumanPerformersSequence ReferencedRequestSequence
   InstanceCoercionDateTime DateOfLastCalibration TimeOfLastCalibration DateOfLastDetectorCalibration
   TimeOfLastDetectorCalibration DateOfSecondaryCapture TimeOfSecondaryCapture ModifyingDeviceManufacturer
Z: AccessionNumber PatientBirthDate PatientID PatientName PatientSex ReferringPhysicianName StudyDate StudyID StudyTime
   VerifyingObserverIdentificationCodeSequence ContentCreatorName
D: ContrastBolusAgent PersonName VerifyingObserverName GraphicAnnotationSequence PersonIdentificationCodeSequence
X/Z: AcquisitionDate AcquisitionTime PatientSexNeutered
X/D: AcquisitionDateTime InstanceCreationDate ProtocolName SeriesDate SeriesTime PerformedProcedureStepStartDateTime
Z/D: ContentDate ContentTime
X/Z/D: DeviceSerialNumber DetectorID InstanceCreationTime InstitutionCodeSequence InstitutionName OperatorsName
   StationName ReferencedSeriesSequence
X/Z/U*: ReferencedImageSequence SourceImageSequence
U: AnnotationGroupUID ConcatenationUID ContextGroupExtensionCreatorUID CreatorVersionUID DeviceUID
   DimensionOrganizationUID DoseReferenceUID FailedSOPInstanceUIDList FiducialUID FrameOfReferenceUID InstanceCreatorUID
   IrradiationEventUID LargePaletteColorLookupTableUID MediaStorageSOPInstanceUID ObservationUID
   PaletteColorLookupTableUID PresentationDisplayCollectionUID PresentationSequenceCollectionUID
   ReferencedFrameOfReferenceUID ReferencedGeneralPurposeScheduledProcedureStepTransactionUID
   ReferencedObservationUIDTrial ReferencedSOPInstanceUID ReferencedSOPInstanceUIDInFile RelatedFrameOfReferenceUID
   RequestedSOPInstanceUID SeriesInstanceUID SOPInstanceUID SourceFrameOfReferenceUID SpecimenUID StorageMediaFileSetUID
   StudyInstanceUID SynchronizationFrameOfReferenceUID TargetUID TemplateExtensionCreatorUID
   TemplateExtensionOrganizationUID TrackingUID TransactionUID UID
"""

#: Retain Device Identity Option (PS3.15 E.3.4): these are kept.
RETAIN_DEVICE_IDENTITY = frozenset(
    """CassetteID DetectorID DeviceDescription DeviceLabel DeviceSerialNumber DeviceUID GantryID GeneratorID
    LongDeviceDescription PerformedStationAETitle PerformedStationGeographicLocationCodeSequence PerformedStationName
    PerformedStationNameCodeSequence PlateID ScheduledStationAETitle ScheduledStationGeographicLocationCodeSequence
    ScheduledStationName ScheduledStationNameCodeSequence SourceSerialNumber StationName UDISequence
    ModifyingDeviceID ModifyingDeviceManufacturer""".split()
)

#: Clean Descriptors Option (PS3.15 E.3.5): free-text descriptions are kept, cleaned.
CLEAN_DESCRIPTORS = frozenset(
    """AcquisitionComments AcquisitionDeviceProcessingDescription AdditionalPatientHistory AdmittingDiagnosesDescription
    CommentsOnThePerformedProcedureStep ContrastBolusAgent DerivationDescription DischargeDiagnosisDescription
    FrameComments IdentifyingComments ImageComments ImagingServiceRequestComments InterpretationDiagnosisDescription
    InterpretationText Occupation PatientComments PerformedProcedureStepDescription ProtocolName ReasonForStudy
    ReasonForTheRequestedProcedure ReasonForVisit RequestedProcedureComments RequestedProcedureDescription
    ResultsComments ScheduledProcedureStepDescription SeriesDescription ServiceEpisodeDescription StudyComments
    StudyDescription TextComments VisitComments ModifiedImageDescription""".split()
)

#: Never shifted by the longitudinal option: birth date/time identify, they are not longitudinal.
NOT_LONGITUDINAL = frozenset({"PatientBirthDate", "PatientBirthTime", "LastMenstrualDate"})

#: Option codes, DICOM CID 7050 "De-identification Method" (coding scheme DCM).
OPTION_CODES = {
    "basic": ("113100", "Basic Application Confidentiality Profile"),
    "clean_descriptors": ("113105", "Clean Descriptors Option"),
    "retain_longitudinal_modified_dates": ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
    "retain_device_identity": ("113109", "Retain Device Identity Option"),
    "retain_safe_private": ("113111", "Retain Safe Private Option"),
}


def _parse(table: str) -> dict[str, str]:
    actions: dict[str, str] = {}
    action = ""
    for token in table.split():
        if token.endswith(":"):
            action = token[:-1]
        else:
            actions[token] = action
    return actions


#: keyword -> Basic Profile action code.
BASIC_PROFILE: dict[str, str] = _parse(_TABLE)
#: tag (int) -> (keyword, action code).
BASIC_PROFILE_TAGS: dict[int, tuple[str, str]] = {
    tag_for_keyword(k): (k, a) for k, a in BASIC_PROFILE.items() if tag_for_keyword(k) is not None
}


#: Sequences of references to other instances: kept, with the table applied inside (their
#: UIDs replaced), so a SEG or a derived image still points at its (de-identified) source.
REFERENCE_SEQUENCES = frozenset({"ReferencedImageSequence", "SourceImageSequence", "ReferencedSeriesSequence"})


def resolve(keyword: str, action: str) -> str:
    """Turn a compound code into the one action taken: X, Z, D, U or R (recurse into references)."""
    if keyword in REFERENCE_SEQUENCES:
        return "R"
    if action.startswith("X"):
        return "X"
    if action == "Z/D":
        return "Z"
    return action


def repeating_group_action(tag: int) -> str | None:
    """Overlay comments/data (60xx,4000)/(60xx,3000) and curve data (50xx,xxxx): removed."""
    group, element = tag >> 16, tag & 0xFFFF
    if 0x5000 <= group <= 0x50FF and group % 2 == 0:
        return "X"
    if 0x6000 <= group <= 0x60FF and group % 2 == 0 and element in (0x3000, 0x4000):
        return "X"
    return None
