"""Client pieces a user meets directly: retry delays, Retry-After, teacher URLs."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from recycled_datasets.errors import ConfigError
from recycled_datasets.teacher.transport import RetryPolicy, _retry_after, split_urls, teacher_token


class _Response:
    def __init__(self, value: str):
        self.headers = {"retry-after": value}


def test_backoff_grows_exponentially_with_jitter_and_stays_under_the_cap():
    policy = RetryPolicy(max_retries=8, base=1.0, cap=10.0)
    rng = random.Random(0)
    delays = [[policy.delay(attempt, None, rng) for _ in range(200)] for attempt in range(6)]
    for attempt, draws in enumerate(delays[:4]):
        nominal = 2**attempt
        assert all(nominal / 2 <= d <= nominal for d in draws)
        assert len({round(d, 6) for d in draws}) > 100  # jittered: clients do not retry in lockstep
    assert all(d <= 10.0 for d in delays[5])


def test_server_retry_after_is_honoured_up_to_the_cap():
    policy = RetryPolicy(base=0.01, cap=30.0)
    rng = random.Random(0)
    assert policy.delay(0, 5.0, rng) >= 5.0
    assert policy.delay(0, 500.0, rng) <= 30.0
    assert _retry_after(_Response("7")) == 7.0
    assert _retry_after(_Response("Wed, 21 Oct 2099 07:28:00 GMT")) > 0
    assert _retry_after(_Response("soon")) is None


def test_teacher_urls_are_checked_and_split():
    assert split_urls("http://a:8080/, https://b/v1") == ["http://a:8080", "https://b/v1"]
    with pytest.raises(ConfigError, match="must start with http"):
        split_urls("localhost:8080")


@pytest.mark.parametrize(
    ("url", "gets_hf_token"),
    [
        ("https://abc123.us-east-1.aws.endpoints.huggingface.cloud", True),
        ("https://user-teacher.hf.space/v1", True),
        ("https://router.huggingface.co/v1", True),
        ("http://abc123.us-east-1.aws.endpoints.huggingface.cloud", False),  # plain http: anyone on the way reads it
        ("https://huggingface.co.attacker.example/v1", False),
        ("https://not-huggingface.co/v1", False),
        ("http://gpu-node-7:8080", False),
    ],
)
def test_the_hugging_face_token_goes_only_to_hugging_face_hosts_over_https(url, gets_hf_token, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_sentinel")
    monkeypatch.delenv("SRECYCLE_TEACHER_TOKEN", raising=False)
    assert teacher_token(url) == ("hf_sentinel" if gets_hf_token else None)
    monkeypatch.setenv("SRECYCLE_TEACHER_TOKEN", "mine")
    assert teacher_token(url) == "mine"  # the teacher token is meant for the teacher servers, whichever they are
    assert teacher_token(url, "explicit") == "explicit"


_OFFLINE_REFLECT = """
import sys, tempfile
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import huggingface_hub.constants
from teacher_server import TeacherServer
from recycled_datasets.records import assign_ids
from recycled_datasets.teacher import ReflectConfig, reflect_rows

assert huggingface_hub.constants.HF_HUB_OFFLINE, "the Hub must be offline for this check"
rows = assign_ids([("Give three tips for staying healthy.", "", "Eat well, sleep, exercise.")])
with TeacherServer() as server, tempfile.TemporaryDirectory() as tmp:
    config = ReflectConfig(
        teacher=server.url, store_dir=Path(tmp) / "store", max_new_tokens=256, backoff_base=0.005,
        backoff_max=0.05, client={"timeout": 5.0, "health_timeout": 5.0}, durable=False, progress=False,
    )
    result = reflect_rows(rows, config)
    print(result.table["ins_status"].to_list(), result.table["both_status"].to_list(), server.generation_requests())
"""


def test_a_loopback_teacher_works_when_hf_hub_offline_is_set_before_any_import():
    """HF_HUB_OFFLINE is about the Hub: the user's own teacher server must still answer, whenever the Hub
    library reads the variable (here at its very first import, as on a cluster that exports it)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", _OFFLINE_REFLECT, str(Path(__file__).parent)],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "['ok'] ['ok'] 3"
