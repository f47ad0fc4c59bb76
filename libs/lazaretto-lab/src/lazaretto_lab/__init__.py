"""Lazaretto's lab (dev only): the real BIND, Kea, snmpd, Postfix and Suricata as local processes on
loopback, the whole system for `make run` and the end-to-end tests (`system`, `wiring`, `databases`),
the CMTS emulator, and the shared pytest fixtures (`testing`, registered as the pytest plugin).

Never shipped in a service image; neither lazaretto_core nor any service imports it.
"""
