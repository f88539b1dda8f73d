"""Other tools' file formats, both ways: saev's activation shards (:mod:`.saev_shards`, the
``import-saev`` and ``export-saev`` stages in :mod:`.import_saev` and :mod:`.export_saev`)."""
