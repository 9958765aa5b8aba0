"""lockerd: controller daemon for smart dossier and evidence lockers."""

__version__ = "0.1.0"
