"""Hardware drivers, one interface per kind (see base.py), with their implementations side by side.

Each driver declares the options it accepts beside its class (options.py
says how); registry.py lists every type a config may name. The core builds
the drivers from that registry (``lockerd.hardware``). Drivers depend only
on each other, ``lockerd.clock`` and ``lockerd.errors``, never on the config
or anything above it.
"""
