"""The fuzz engine: hypothesis draws inputs for one target (raw bytes, seed mutations, JSON field swaps),
and each drawn input is followed by `HAVOC` cheap random mutants of it (AFL-style havoc: byte flips,
token inserts, cuts, repeats), because hypothesis alone draws a few hundred inputs a second here. Every
input is one parser call, counted; an exception other than the target's documented rejection is a
crash, recorded (type, place, input) without stopping the run.
"""

from __future__ import annotations

import json
import random
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from targets import Target

# One hypothesis run at most this long: its data tree grows with every example, so a long target run
# is many short runs (each with a fresh random seed).
MAX_BATCH = 1_000
BATCH_SECONDS = 2.0
KEPT_CRASHES = 20
HAVOC = 32

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=24),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
    max_leaves=10,
)


@dataclass
class Crash:
    kind: str
    message: str
    data: bytes
    where: str


@dataclass
class Result:
    name: str
    inputs: int = 0
    rejected: int = 0
    crashes: int = 0
    seconds: float = 0.0
    examples: list[Crash] = field(default_factory=list)
    kinds: set[str] = field(default_factory=set)


def _swap_json_field(seed: bytes, path_choice: int, value: object) -> bytes:
    """The seed with one (possibly nested) field replaced by `value`, or removed when value is ...."""
    obj = json.loads(seed)
    slots: list[tuple[Any, Any]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, child in node.items():
                slots.append((node, key))
                walk(child)
        elif isinstance(node, list):
            for index, child in enumerate(node):
                slots.append((node, index))
                walk(child)

    walk(obj)
    if not slots:
        return json.dumps(value).encode()
    parent, key = slots[path_choice % len(slots)]
    if value is Ellipsis and isinstance(parent, dict):
        del parent[key]
    else:
        parent[key] = None if value is Ellipsis else value
    return json.dumps(obj, allow_nan=True).encode()


def inputs_for(target: Target) -> st.SearchStrategy[bytes]:
    seeds = st.sampled_from(target.seeds)
    tokens = st.sampled_from(target.tokens or (b"\x00",))

    @st.composite
    def mutated(draw: st.DrawFn) -> bytes:
        data = bytearray(draw(seeds))
        for _ in range(draw(st.integers(1, 5))):
            op = draw(st.integers(0, 6))
            at = draw(st.integers(0, len(data)))
            end = draw(st.integers(at, min(len(data), at + 64)))
            if op == 0:
                data[at:at] = draw(st.binary(min_size=1, max_size=8))
            elif op == 1:
                del data[at:end]
            elif op == 2:
                data[at:end] = draw(tokens)
            elif op == 3:
                data[at:at] = draw(tokens)
            elif op == 4:
                data[at:at] = data[at:end] * draw(st.integers(1, 40))
            elif op == 5:
                other = draw(seeds)
                cut = draw(st.integers(0, len(other)))
                data[at:] = other[cut:]
            elif op == 6 and data:
                data[min(at, len(data) - 1)] = draw(st.integers(0, 255))
        return bytes(data)

    options = [st.binary(max_size=512), mutated()]
    if target.json_seeds:

        @st.composite
        def swapped(draw: st.DrawFn) -> bytes:
            value = draw(st.just(...) | JSON_VALUES)
            return _swap_json_field(draw(seeds), draw(st.integers(0, 1000)), value)

        options.append(swapped())
    return st.one_of(options)


def havoc(data: bytes, rng: random.Random, tokens: tuple[bytes, ...]) -> bytes:
    """One AFL-style havoc mutant of `data`: one to four random edits."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        at = rng.randint(0, len(out))
        end = min(len(out), at + rng.randint(0, 16))
        op = rng.randrange(7)
        if op == 0 and out:
            out[min(at, len(out) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1:
            out[at:at] = bytes([rng.randrange(256)])
        elif op == 2:
            del out[at:end]
        elif op == 3 and tokens:
            out[at:end] = rng.choice(tokens)
        elif op == 4 and tokens:
            out[at:at] = rng.choice(tokens)
        elif op == 5:
            out[at:at] = out[at:end] * rng.randint(2, 20)
        elif op == 6 and out:
            out[min(at, len(out) - 1)] = rng.choice(b'\x00\xff\n\r"\\{}[]:=<>-0 9%')
    return bytes(out)


def run_target(target: Target, count: int, seconds: float | None = None) -> Result:
    """Feed `target` `count` inputs (fewer if `seconds` runs out first)."""
    result = Result(target.name)
    started = time.monotonic()
    strategy = inputs_for(target)

    def one(data: bytes) -> None:
        result.inputs += 1
        try:
            target.parse(data)
        except target.rejects:
            result.rejected += 1
        except Exception as exc:  # the point of fuzzing: anything else is a crash, counted and kept
            result.crashes += 1
            kind = f"{type(exc).__name__}"
            where = traceback.extract_tb(exc.__traceback__)[-1]
            signature = f"{kind} at {where.filename.rsplit('/', 1)[-1]}:{where.lineno}"
            if signature not in result.kinds and len(result.examples) < KEPT_CRASHES:
                result.examples.append(Crash(kind, str(exc)[:200], data[:300], signature))
            result.kinds.add(signature)

    batch = 10  # examples per hypothesis run, grown to about BATCH_SECONDS of work once the rate is known
    while result.inputs < count:
        if seconds is not None and time.monotonic() - started > seconds:
            break
        before, t0 = result.inputs, time.monotonic()
        left = max(1, (count - result.inputs) // (HAVOC + 1))

        @settings(
            max_examples=min(batch, left),
            database=None,
            deadline=None,
            derandomize=False,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(strategy, st.integers(0, 2**32))
        def probe(data: bytes, seed: int) -> None:
            one(data)
            rng = random.Random(seed)
            for _ in range(HAVOC):
                one(havoc(data, rng, target.tokens))

        probe()
        rate = (result.inputs - before) / max(time.monotonic() - t0, 1e-3)
        batch = int(min(MAX_BATCH, max(1, rate * BATCH_SECONDS / (HAVOC + 1))))
    result.seconds = time.monotonic() - started
    return result
