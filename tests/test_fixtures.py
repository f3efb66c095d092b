"""The fixture copies the suite replays are present, complete and unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import recordings
from tests.test_anthropic_replay import ERROR_EXCHANGES, JSON_EXCHANGES, SSE_EXCHANGES
from tests.test_openai_recorded import EXCHANGES as OPENAI_EXCHANGES

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "fixtures"


class TestFixtures:
    def test_every_replay_group_has_cases(self):
        """A parametrisation over nothing would pass silently; each group has real cases."""
        assert len(recordings.recorded_files()) >= 30
        assert len(SSE_EXCHANGES) >= 10
        assert len(JSON_EXCHANGES) >= 5
        assert len(ERROR_EXCHANGES) >= 2
        assert len(OPENAI_EXCHANGES) >= 5

    def test_packs_are_there(self):
        assert len(list(recordings.PACKS.glob("*.pack.json"))) >= 14
        assert (recordings.PACKS / "promptpack.schema.json").is_file()

    def test_a_missing_folder_is_an_error_not_an_empty_list(self, monkeypatch, tmp_path):
        monkeypatch.setattr(recordings, "RECORDED", tmp_path / "nowhere")
        with pytest.raises(recordings.MissingFixtures):
            recordings.recorded_files()

    @pytest.mark.skipif(not SHARED.is_dir(), reason="shared/ is beside the checkout only on developer machines and CI")
    def test_copies_match_shared_byte_for_byte(self):
        for sub in ("recorded", "packs"):
            theirs = {p.relative_to(SHARED / sub): p.read_bytes() for p in (SHARED / sub).rglob("*") if p.is_file()}
            ours = {p.relative_to(recordings.FIXTURES / sub): p.read_bytes()
                    for p in (recordings.FIXTURES / sub).rglob("*") if p.is_file()}
            assert ours == theirs, f"tests/fixtures/{sub} differs from shared/fixtures/{sub}"
