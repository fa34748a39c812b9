"""A test case that writes director.toml files and loads or checks them."""

from __future__ import annotations

from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from lvsfeedback.director.config import check_config, load_config


class ConfigFileTestCase(SynchronousTestCase):
    def write(self, text: str, name: str = "director.toml") -> Path:
        folder = Path(self.mktemp())
        folder.mkdir(parents=True)
        path = folder / name
        path.write_text(text)
        return path

    def load(self, text: str):
        return load_config(self.write(text))

    def assertProblems(self, text: str, expected: list[str]) -> None:
        path = self.write(text)
        self.assertEqual(check_config(path), [f"{path}: {problem}" for problem in expected])
