"""The client-to-server stream layer: no feature logic lives here."""
