"""Simulators: a virtual fleet on the real wire protocols, and an SMPP SMSC."""
