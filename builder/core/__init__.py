"""The core every part may use, and which imports nothing else of the kit: errors and their one handler (errors),
the model spec (spec), data splits (data), in-process scoring (evaluate) and the artifacts store that owns the build
record and the cached splits on disk (artifacts). No torch here: `pip install .[client]` needs this package."""
