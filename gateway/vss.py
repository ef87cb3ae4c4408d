"""The COVESA VSS signal names the gateway and the simulators name in code.

Decode turns the first five into batch columns; every policy bundle lists them (in the
categories of :data:`gateway.policy.checks.COLUMN_CATEGORIES`). The rest are what the
simulated fleet publishes besides. Any other signal is only ever named by the policy bundle.
"""

from __future__ import annotations

__all__ = [
    "ACCELERATION",
    "ALTITUDE",
    "HEADING",
    "LATITUDE",
    "LONGITUDE",
    "LOW_VOLTAGE_STATE",
    "SPEED",
    "STATE_OF_CHARGE",
    "TIMESTAMP",
    "TRAVELED_DISTANCE",
    "VIN",
]

VIN = "Vehicle.VehicleIdentification.VIN"
LATITUDE = "Vehicle.CurrentLocation.Latitude"
LONGITUDE = "Vehicle.CurrentLocation.Longitude"
ALTITUDE = "Vehicle.CurrentLocation.Altitude"
TIMESTAMP = "Vehicle.CurrentLocation.Timestamp"

HEADING = "Vehicle.CurrentLocation.Heading"
SPEED = "Vehicle.Speed"
TRAVELED_DISTANCE = "Vehicle.TraveledDistance"
ACCELERATION = "Vehicle.Acceleration.Longitudinal"
STATE_OF_CHARGE = "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current"
LOW_VOLTAGE_STATE = "Vehicle.LowVoltageSystemState"
