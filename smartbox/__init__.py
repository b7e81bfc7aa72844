"""smartbox: a regional DICOM hub that receives, de-identifies, stages and exports studies."""

__version__ = "0.1.0"
