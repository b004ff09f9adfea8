"""Fuzzing: the config-loader target (atheris), seed corpora, and `make fuzz`'s runner."""
