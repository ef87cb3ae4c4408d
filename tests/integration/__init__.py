"""End-to-end and fault tests against a real Mosquitto and the gateway as a process."""
