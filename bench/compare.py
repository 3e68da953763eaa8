"""Two checkouts' benchmarks side by side, in one run, on one machine.

A change that claims to cost nothing is measured against the commit before
it, not against figures from another day: the machine's load moves both the
same way when the two checkouts take turns. For each benchmark this runs the
old checkout's and this checkout's, ``--rounds`` times, taking turns at going
first, and prints each result line, the median ratio of each side, and how
``ours`` moved round by round: the median and mean change, the 95 % interval
of the mean (Student's t) and an exact sign test on the rounds, so that a
reader sees whether the rounds tell the two sides apart at all.

Usage::

    git clone . /tmp/old && git -C /tmp/old checkout de05861   # and make its .venv
    .venv/bin/python -m bench.compare --old /tmp/old
    .venv/bin/python -m bench.compare --old /tmp/old --rounds 3 refresh smtp_relay
    .venv/bin/python -m bench.compare --old /tmp/old --same-harness smtp_relay
    .venv/bin/python -m bench.compare --old /tmp/old --same-harness --clients 4 smtp_relay
    .venv/bin/python -m bench.compare --old /tmp/old --same-harness --pace 3 smtp_relay

Each checkout runs with its own ``.venv/bin/python``. With ``--same-harness``,
smtp_relay runs this checkout's benchmark for both sides, the old side with
the old checkout's daemon (``--daemon-from``): the harness changes too between
two commits (rig, client, timing), and this leaves only the daemons'
difference; ``--clients N`` (with ``--same-harness``) has smtp_relay submit over
N connections at once on both sides, and ``--pace MS`` at most one message per MS
milliseconds (compare ``cpu_ms``, the daemon's CPU per message, when both
relays keep up). The last line is
``bench compare: ...`` with the median ``ratio`` of each benchmark, old and new.
"""

from __future__ import annotations

import argparse
import math
import re
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
DEFAULT = ["refresh", "smtp_relay", "imap_ingest", "imap_idle"]
RESULT = re.compile(r"^bench (?P<name>\S+): ratio=(?P<ratio>[\d.]+) ours=(?P<ours>[\d.]+) .*$")


#: The benchmarks whose product runs in a child of its own, which this checkout's
#: harness can start from another checkout (``--daemon-from``).
DAEMON_CHILD = {"smtp_relay"}


def runOne(checkout: Path, name: str, extra: list[str], harness: Path | None = None) -> str | None:
    """The benchmark's result line, or None (its failure is printed, the run goes on).

    ``harness``: run that checkout's benchmark with ``checkout``'s daemon.
    """
    if harness is not None and harness != checkout:
        extra = [*extra, "--daemon-from", str(checkout)]
        checkout = harness
    python = checkout / ".venv" / "bin" / "python"
    done = subprocess.run(
        [str(python), "-m", f"bench.{name}", *extra],
        cwd=checkout,
        capture_output=True,
        text=True,
    )
    lines = [line for line in done.stdout.splitlines() if RESULT.match(line)]
    if done.returncode or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        print(f"  {checkout.name} {name} failed ({done.returncode}): {' | '.join(tail)}")
        return None
    return lines[-1]


#: Student's t at 97.5 % for 1 to 30 degrees of freedom (a two-sided 95 % interval).
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def signTest(lower: int, higher: int) -> float:
    """Two-sided exact sign test: how likely a split this uneven is if neither side is faster."""
    n = lower + higher
    if n == 0:
        return 1.0
    k = min(lower, higher)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def meanInterval(changes: list[float]) -> tuple[float, float] | None:
    """The 95 % interval of the mean per-round change (Student's t), or None for one round."""
    if len(changes) < 2:
        return None
    mean = statistics.mean(changes)
    t = _T975[len(changes) - 2] if len(changes) - 1 <= len(_T975) else 1.96
    half = t * statistics.stdev(changes) / math.sqrt(len(changes))
    return mean - half, mean + half


def describeRounds(old: dict[int, float], new: dict[int, float]) -> str:
    """``ours`` of both sides, and new against old round by round (rounds both finished).

    A median ratio hides how often the new side lost: the machine drifts more
    between rounds than between the two runs of one round. The interval and the
    sign test say whether the rounds tell the two apart at all: an interval
    that holds 0, or a sign test far above 0.05, means these rounds cannot.
    """
    both = sorted(set(old) & set(new))
    if not both:
        return "ours: no round finished on both sides"
    changes = [100 * (new[r] / old[r] - 1) for r in both]
    lower = sum(change < 0 for change in changes)
    higher = sum(change > 0 for change in changes)
    interval = meanInterval(changes)
    mean = f"mean {statistics.mean(changes):+.1f} %"
    if interval is not None:
        mean += f", 95 % interval {interval[0]:+.1f} to {interval[1]:+.1f} %"
    return (
        f"ours old {statistics.median(old.values()):.4g} new {statistics.median(new.values()):.4g}"
        f" (medians); new against old per round {statistics.median(changes):+.1f} %"
        f" ({mean}), lower in {lower} of {len(both)}"
        f" (sign test p = {signTest(lower, higher):.2g})"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", type=Path, required=True, help="the other checkout")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="pass --quick to each benchmark")
    parser.add_argument(
        "--same-harness",
        action="store_true",
        help="for " + ", ".join(sorted(DAEMON_CHILD)) + ": run this checkout's benchmark for"
        " both sides, with the old checkout's daemon for the old side, so that changes to"
        " the harness (rig, client, timing) do not count",
    )
    parser.add_argument(
        "--clients",
        type=int,
        default=None,
        metavar="N",
        help="with --same-harness: smtp_relay submits over N connections at once",
    )
    parser.add_argument(
        "--pace",
        type=float,
        default=None,
        metavar="MS",
        help="with --same-harness: smtp_relay sends at most one message per MS milliseconds",
    )
    parser.add_argument("names", nargs="*", default=DEFAULT)
    args = parser.parse_args(argv)
    for option, value in (("--clients", args.clients), ("--pace", args.pace)):
        if value is not None and not args.same_harness:
            # The old checkout's own harness may not know the option.
            parser.error(f"{option} needs --same-harness")
    extra = ["--quick"] if args.quick else []
    summary = []
    for name in args.names:
        ratios: dict[str, list[float]] = {"old": [], "new": []}
        ours: dict[str, dict[int, float]] = {"old": {}, "new": {}}
        harness = HERE if args.same_harness and name in DAEMON_CHILD else None
        if args.same_harness and harness is None:
            print(f"{name}: --same-harness does not apply (no daemon child): own harnesses")
        options = list(extra)
        for option, value in (("--clients", args.clients), ("--pace", args.pace)):
            if value is None:
                continue
            if harness is None:
                print(f"{name}: {option} does not apply (no daemon child)")
            else:
                options += [option, f"{value:g}"]
        sides = [("old", args.old.resolve()), ("new", HERE)]
        for round_ in range(args.rounds):
            # Turns alternate (old first, then new first): a side that always ran
            # second would carry whatever the first left behind (page cache, I/O).
            for side, checkout in sides if round_ % 2 == 0 else sides[::-1]:
                line = runOne(checkout, name, options, harness)
                if line is None:
                    continue
                print(f"  round {round_ + 1} {side}: {line}", flush=True)
                found = RESULT.match(line)
                assert found is not None
                ratios[side].append(float(found["ratio"]))
                ours[side][round_] = float(found["ours"])
        medians = {
            side: (statistics.median(values) if values else float("nan"))
            for side, values in ratios.items()
        }
        spread = {side: f"{min(v):.2f}-{max(v):.2f}" if v else "none" for side, v in ratios.items()}
        print(
            f"{name}: ratio old {medians['old']:.2f} ({spread['old']}) "
            f"new {medians['new']:.2f} ({spread['new']})",
            flush=True,
        )
        print(f"{name}: {describeRounds(ours['old'], ours['new'])}", flush=True)
        summary.append(f"{name}={medians['old']:.2f}->{medians['new']:.2f}")
    print("bench compare: " + " ".join(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
