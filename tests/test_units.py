"""featurelake.units: the one parser and formatter of durations and of sizes, and the config types on them."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import BaseModel

from featurelake.config import ProjectConfig
from featurelake.errors import ConfigError
from featurelake.units import ByteSize, Duration, format_duration, format_size, parse_duration, parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", timedelta(seconds=30)),
        ("5m", timedelta(minutes=5)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("7d", timedelta(days=7)),
        ("1w", timedelta(weeks=1)),
        ("12h", timedelta(hours=12)),
        ("90s", timedelta(seconds=90)),
        ("250ms", timedelta(milliseconds=250)),
        ("1y", timedelta(days=365)),
        ("1.5h", timedelta(minutes=90)),
        ("0s", timedelta(0)),
        (" 7D ", timedelta(days=7)),  # the maintenance flags took any case and blanks around
        ("7 d", timedelta(days=7)),
        ("1h 30m", timedelta(hours=1, minutes=30)),
        (3600, timedelta(hours=1)),  # a bare number (YAML int) is seconds
        (0.5, timedelta(milliseconds=500)),
        (timedelta(days=2), timedelta(days=2)),
    ],
)
def test_parse_duration_accepts_every_documented_spelling(
    text: str | float | timedelta, expected: timedelta
) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("7x", "--flag '7x' is not a duration: expected a duration like 30s, 5m, 1h30m, 7d or 1w"),
        ("", "--flag '' is not a duration"),
        ("three days", "--flag 'three days' is not a duration"),
        ("5 minutes", "--flag '5 minutes' is not a duration"),
        ("-1h", "--flag '-1h' is not a duration"),
        ("1h-", "--flag '1h-' is not a duration"),
        ("3600", "--flag '3600' is not a duration"),  # a string needs a unit, as before
        (-5, "--flag -5 is not a duration: a number of seconds must be >= 0"),
        (float("nan"), "--flag nan is not a duration"),
        (True, "--flag True is not a duration"),
        (timedelta(seconds=-1), "is negative"),
        ("99999999999y", "too long a duration"),
    ],
)
def test_parse_duration_refuses_with_the_name_and_the_accepted_forms(value: object, needle: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration(value, "--flag")  # type: ignore[arg-type]
    assert needle in str(info.value)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0, "0s"),
        (30, "30s"),
        (3600, "1h"),
        (5400, "1h30m"),
        (86_400, "1d"),
        (604_800, "7d"),  # weeks are written as days: people and Prometheus both read them
        (0.25, "250ms"),
        (90061.5, "1d1h1m1s500ms"),
        (timedelta(days=2, minutes=5), "2d5m"),
        (-3600, "-1h"),
    ],
)
def test_format_duration_is_the_shortest_exact_form(value: float | timedelta, text: str) -> None:
    assert format_duration(value) == text
    assert parse_duration(text.lstrip("-")) == abs(
        value if isinstance(value, timedelta) else timedelta(seconds=value)
    )


def test_format_duration_round_trips_and_spaces_parts_for_people() -> None:
    for seconds in (1, 59, 61, 3599, 3601, 86_399, 86_401, 7 * 86_400 + 1, 123_456.789):
        assert parse_duration(format_duration(seconds)) == timedelta(seconds=round(seconds, 3))
        assert parse_duration(format_duration(seconds, sep=" ")) == timedelta(seconds=round(seconds, 3))
    assert format_duration(timedelta(days=2, minutes=5), sep=" ") == "2d 5m"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("128MB", 128_000_000),
        ("512KiB", 512 * 1024),
        ("1.5GB", 1_500_000_000),
        ("2gib", 2 * 1024**3),
        (" 64 MiB ", 64 * 1024**2),
        ("1048576", 1_048_576),
        ("100B", 100),
        (4096, 4096),
    ],
)
def test_parse_size(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("big", "--target-file-size 'big' is not a size: use e.g. 128MB, 512KiB or a number of bytes"),
        ("128 megabytes", "is not a size"),
        ("-1MB", "is not a size"),
        (-1, "is not a size"),
        (True, "is not a size"),
        ("1000B", "--target-file-size '1000B' is too small: give at least 1,024 bytes"),
    ],
)
def test_parse_size_refuses(value: object, needle: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_size(value, "--target-file-size", minimum=1024)  # type: ignore[arg-type]
    assert needle in str(info.value)


def test_format_size_and_back() -> None:
    cases = {
        0: "0 B",
        999: "999 B",
        1000: "1.0 KB",
        1500: "1.5 KB",
        128_000_000: "128.0 MB",
        5 * 10**9: "5.0 GB",
    }
    for n, text in cases.items():
        assert format_size(n) == text
        assert parse_size(text) == n
    assert format_size(5 * 10**12) == "5000.0 GB"  # GB is the largest unit shown


def test_pydantic_types_parse_and_serialize() -> None:
    class Section(BaseModel):
        age: Duration = timedelta(days=3)
        size: ByteSize = 128_000_000

    s = Section.model_validate({"age": "1h30m", "size": "64MiB"})
    assert s.age == timedelta(minutes=90) and s.size == 64 * 1024**2
    assert s.model_dump(mode="json") == {"age": "1h30m", "size": 64 * 1024**2}
    assert Section.model_validate(s.model_dump(mode="json")) == s
    assert Section.model_validate({"age": 60}).age == timedelta(minutes=1)


# --- config: bad values fail when it loads, naming the key ----------------------------------------------


def test_config_durations_and_sizes_load_typed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "featurelake.yaml").write_text(
        "maintenance:\n  expire_older_than: 1h30m\n  orphan_min_age: 7200\n"
        "  compaction_target_file_size: 64MiB\nmonitoring:\n  state_retention: 2w\n"
    )
    monkeypatch.setenv("FEATURELAKE_MAINTENANCE__EXPIRE_OLDER_THAN", "12h")
    s = ProjectConfig.load(tmp_path).settings
    assert s.maintenance.expire_older_than == timedelta(hours=12)  # env wins over the file
    assert s.maintenance.orphan_min_age == timedelta(hours=2)
    assert s.maintenance.compaction_target_file_size == 64 * 1024**2
    assert s.monitoring.state_retention == timedelta(weeks=2)


def test_ingest_log_batches_comes_from_the_config_and_yields_to_an_override(tmp_path: Path) -> None:
    from featurelake.streaming.ingest import IngestSettings

    (tmp_path / "featurelake.yaml").write_text("ingest:\n  log_batches: 3\n")
    cfg = ProjectConfig.load(tmp_path).settings.ingest
    assert IngestSettings.from_config(cfg).log_batches == 3
    assert IngestSettings.from_config(cfg, log_batches=1).log_batches == 1
    (tmp_path / "featurelake.yaml").write_text("")
    assert IngestSettings.from_config(ProjectConfig.load(tmp_path).settings.ingest).log_batches == 10


def test_config_defaults_are_the_documented_ones(tmp_path: Path) -> None:
    (tmp_path / "featurelake.yaml").write_text("")
    s = ProjectConfig.load(tmp_path).settings
    assert s.maintenance.expire_older_than == parse_duration("7d")
    assert s.maintenance.orphan_min_age == parse_duration("3d")
    assert s.maintenance.compaction_target_file_size == parse_size("128MB")
    assert s.monitoring.state_retention == parse_duration("8d")


@pytest.mark.parametrize(
    ("yaml_text", "env", "needles"),
    [
        (
            "maintenance:\n  orphan_min_age: three days\n",
            {},
            ["'maintenance.orphan_min_age': 'three days' is not a duration: expected a duration like 30s"],
        ),
        (
            "maintenance:\n  expire_older_than: -5\n",
            {},
            ["'maintenance.expire_older_than': -5 is not a duration"],
        ),
        (
            "monitoring:\n  state_retention: a week\n",
            {},
            ["'monitoring.state_retention': 'a week' is not a duration"],
        ),
        (
            "maintenance:\n  compaction_target_file_size: huge\n",
            {},
            ["'maintenance.compaction_target_file_size': 'huge' is not a size"],
        ),
        (
            "maintenance:\n  compaction_target_file_size: 100B\n",
            {},
            ["'maintenance.compaction_target_file_size'", "greater than or equal to 1024"],
        ),
        (
            "ingest:\n  log_batches: 0\n",
            {},
            ["'ingest.log_batches'", "greater than or equal to 1"],
        ),
        (
            "",
            {"FEATURELAKE_MAINTENANCE__ORPHAN_MIN_AGE": "soon"},
            [
                "'maintenance.orphan_min_age' (from env FEATURELAKE_MAINTENANCE__ORPHAN_MIN_AGE): "
                "'soon' is not a duration"
            ],
        ),
    ],
)
def test_bad_config_values_fail_at_load_naming_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, yaml_text: str, env: dict[str, str], needles: list[str]
) -> None:
    (tmp_path / "featurelake.yaml").write_text(yaml_text)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError) as info:
        ProjectConfig.load(tmp_path)
    msg = str(info.value)
    assert msg.startswith(f"invalid configuration in {tmp_path.resolve() / 'featurelake.yaml'}: ")
    for needle in needles:
        assert needle in msg
    assert "Value error" not in msg
