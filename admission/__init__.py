"""DriftSched admission: output-length estimation at the gateway, its drift calibration and the learned predictor."""
