"""Lab peers: start the real BIND, Kea, snmpd, Postfix and Suricata as local processes on loopback.

Used by the tests and by `make run`; nothing here is imported by a service at run time.
"""
