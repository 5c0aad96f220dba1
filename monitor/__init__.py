"""Thermostat: calibration monitoring and recalibration for deployed language models."""

__version__ = "0.1.0"
