"""The pure parts of `notaflow dev`: the stop plan, the leftover message, D/env, the
watchdog's bookkeeping and the /proc/net/tcp reading."""

from __future__ import annotations

from pathlib import Path

import pytest

from notaflow.launch import envfile
from notaflow.launch.devstack import Child, leftover_message, stop_in_order
from notaflow.launch.lifeline import registered_pids
from notaflow.launch.ports import Holder, listening_inodes


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class FakeProcess:
    """Exits `stops_after` seconds after SIGTERM (None: never), at once on SIGKILL."""

    def __init__(self, clock: FakeClock, log: list[str], name: str, stops_after: float | None):
        self.clock, self.log, self.name, self.stops_after = clock, log, name, stops_after
        self.exit_at: float | None = None
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None and self.exit_at is not None and self.clock() >= self.exit_at:
            self.returncode = 0
        return self.returncode

    def send_signal(self, _signum: int) -> None:
        self.log.append(f"{self.clock():.2f} term {self.name}")
        if self.stops_after is not None:
            self.exit_at = self.clock() + self.stops_after

    def kill(self) -> None:
        self.log.append(f"{self.clock():.2f} kill {self.name}")
        self.returncode = -9

    def wait(self) -> int | None:
        return self.returncode


def _tiers(
    clock: FakeClock, log: list[str], spec: list[list[tuple[str, float | None]]]
) -> list[list[Child]]:
    return [
        [Child.of(name, FakeProcess(clock, log, name, after)) for name, after in tier]  # type: ignore[arg-type]
        for tier in spec
    ]


def test_tiers_stop_in_order_each_in_parallel() -> None:
    clock, log = FakeClock(), list[str]()
    tiers = _tiers(
        clock,
        log,
        [[("ingress", 0.5)], [("c1", 1.0), ("c2", 1.0)], [("sandbox", 0.2)], [("broker", 0.1)]],
    )
    killed = stop_in_order(tiers, 10, clock=clock, sleep=clock.sleep)
    assert killed == []
    names = [line.split()[2] for line in log]
    assert names == ["ingress", "c1", "c2", "sandbox", "broker"]
    started = {line.split()[2]: float(line.split()[0]) for line in log}
    assert started["c1"] == started["c2"]  # in parallel
    assert started["ingress"] < started["c1"] < started["sandbox"] < started["broker"]
    assert clock() < 2.5


def test_a_hung_child_is_killed_at_the_end_of_its_tier_share() -> None:
    clock, log = FakeClock(), list[str]()
    tiers = _tiers(
        clock, log, [[("ingress", None)], [("c1", 0.1)], [("sandbox", 0.1)], [("broker", 0.1)]]
    )
    killed = stop_in_order(tiers, 10, clock=clock, sleep=clock.sleep)
    assert killed == ["ingress"]
    started = {line.split()[2]: float(line.split()[0]) for line in log if " term " in line}
    # Killed when the ingress's share (25 %) ran out, before the consumers were asked to stop.
    kill = next(line for line in log if " kill " in line)
    assert kill.endswith("kill ingress") and 2.4 <= float(kill.split()[0]) <= 2.6
    assert log.index(kill) < log.index(next(x for x in log if x.endswith("term c1")))
    assert 2.4 <= started["c1"] <= 2.6
    assert clock() < 3.5


def test_everything_hung_is_killed_within_nine_tenths_of_the_bound() -> None:
    clock, log = FakeClock(), list[str]()
    tiers = _tiers(clock, log, [[("i", None)], [("c", None)], [("s", None)], [("b", None)]])
    assert stop_in_order(tiers, 10, clock=clock, sleep=clock.sleep) == ["i", "c", "s", "b"]
    assert clock() <= 9.05


def test_leftovers_name_the_holder_and_the_way_out() -> None:
    data = Path(".notaflow")
    cli = "python -m notaflow.launch.cli"
    ingress = Holder(41, f"{cli} ingress", 40, f"{cli} dev")
    stranger = Holder(77, "nginx: master process", 1, "/sbin/init")
    orphan = Holder(55, "/x/tansu broker --listener-url tcp://127.0.0.1:9092", 1, "/sbin/init")
    assert leftover_message(data, {}, {}) is None
    running = leftover_message(
        data, {"supervisor": 40, "ingress": 41}, {8000: ("--port", [ingress])}
    )
    assert running is not None
    assert "notaflow dev is already running from .notaflow (pid 40)" in running
    assert f"port 8000 is held by pid 41 ({cli} ingress): notaflow dev's ingress" in running
    assert "kill 40" in running and "--port" in running
    other = leftover_message(
        data, {}, {8000: ("--port", [ingress]), 9092: ("--kafka-port", [orphan])}
    )
    assert other is not None
    assert "a process of the notaflow dev running as pid 40" in other
    assert "a leftover: its notaflow dev is gone" in other
    assert "kill 40" in other and "Or choose other ports with --kafka-port / --port." in other
    foreign = leftover_message(data, {}, {8000: ("--port", [stranger])})
    assert foreign is not None and "not a notaflow process" in foreign and "kill" not in foreign
    stale = leftover_message(data, {"consumer-emission": 12, "broker": 13}, {})
    assert stale is not None and "left processes running" in stale and "kill 12 13" in stale


def test_env_file_round_trip_with_awkward_values(tmp_path: Path) -> None:
    env = {
        "NOTAFLOW_A": "plain",
        "NOTAFLOW_B": "with space 'and' \"quotes\" $HOME",
        "NOTAFLOW_C": "",
    }
    envfile.write(tmp_path / "env", env, "written by a test\nsecond line")
    assert envfile.read(tmp_path / "env") == env
    assert (tmp_path / "env").stat().st_mode & 0o777 == 0o600
    with pytest.raises(ValueError, match="line 1"):
        envfile.parse("not a setting")


def test_verb_environment_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    envfile.write(tmp_path / "env", {"NOTAFLOW_X": "file", "NOTAFLOW_Y": "file"}, "h")
    env, path, overridden = envfile.verb_environment(str(tmp_path), {"NOTAFLOW_Y": "shell"})
    assert (env["NOTAFLOW_X"], env["NOTAFLOW_Y"], path, overridden) == (
        "file", "shell", tmp_path / "env", ["NOTAFLOW_Y"],
    )  # fmt: skip
    with pytest.raises(FileNotFoundError):
        envfile.verb_environment(str(tmp_path / "nowhere"), {})
    monkeypatch.chdir(tmp_path)  # no .notaflow/ here and no --data-dir: the environment only
    assert envfile.verb_environment(None, {"K": "v"}) == ({"K": "v"}, None, [])


def test_watchdog_bookkeeping() -> None:
    assert registered_pids(["10\n", "11\n", "-10\n", "\n", "12\n"]) == {11, 12}


def test_listening_inodes_reads_proc_net_tcp() -> None:
    table = (
        "  sl local_address rem_address st tx:rx tr:tm->when retrnsmt uid timeout inode\n"
        "   0: 0100007F:1F40 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 4242 1\n"
        "   1: 0100007F:1F40 0100007F:9C40 01 00000000:00000000 00:00000000 00000000 0 0 4343 1\n"
        "   2: 0100007F:2384 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 4444 1\n"
    )
    assert listening_inodes(table, 8000) == {"4242"}
    assert listening_inodes(table, 9092) == {"4444"}
    assert listening_inodes(table, 1) == set()
