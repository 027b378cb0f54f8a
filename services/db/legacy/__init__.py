"""The single migration history databases had before each domain owned its
own (services/<domain>/migrations/). Frozen: never edited, never extended. It
only brings a database made then to revision 0003, whose schema the domain
baselines (`covers_legacy_schema = True`) then take over (services/db/engine.py)."""
