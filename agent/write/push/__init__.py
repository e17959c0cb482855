"""Pyroscope's push API messages (``push.v1``, ``types.v1``), generated from the protos here."""
