"""calibration of compot-zoo (import as zoo.calibration)."""
