"""Procedural ALFWorld-like households: object/receptacle tables, floorplans, splits and goals.

Pure Python (stdlib only); used by `himac_ray.envs.alfworld`, which owns the game rules.
Must not import gymnasium, numpy, torch or ray.

A household is a floorplan (a fixed set of numbered receptacles, like an ALFRED scene) plus one
game drawn from a seed: a goal (task type, object type, receptacle type or lamp) and a placement of
numbered objects in the receptacles. Names follow ALFWorld: lower-case types plus a number
(`cabinet 3`, `mug 1`).

Splits (see `generate_household`):
- Floorplans 1-30 are kitchens, 201-230 living rooms, 301-330 bedrooms, 401-430 bathrooms, as in
  ALFRED. `UNSEEN_FLOORPLANS` (10, 219, 308, 424: the scenes of ALFWorld's valid_unseen) appear only
  in `eval_out_of_distribution`.
- About 15% of the (task type, object, receptacle-or-lamp) goal triples (`is_held_out`) appear only
  in `eval_out_of_distribution`; there half the games draw their goal from those triples.
- `train` and `eval_in_distribution` share floorplans and goal triples, and are kept disjoint by a
  fingerprint of the whole household: `eval_in_distribution` keeps only households whose
  fingerprint is 0 mod 4, `train` only the others.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass, field
from functools import lru_cache

TASK_TYPES = {
    1: "pick_and_place_simple",
    2: "look_at_obj_in_light",
    3: "pick_clean_then_place_in_recep",
    4: "pick_heat_then_place_in_recep",
    5: "pick_cool_then_place_in_recep",
    6: "pick_two_obj_and_place",
}
SIMPLE, LIGHT, CLEAN, HEAT, COOL, TWO = (TASK_TYPES[i] for i in range(1, 7))
SPLITS = ("train", "eval_in_distribution", "eval_out_of_distribution")

# Goal templates from alfworld/gen/goal_library.py; one of the two is picked at random.
GOAL_TEMPLATES = {
    SIMPLE: ("put a {obj} in {recep}", "put some {obj} on {recep}"),
    LIGHT: ("look at {obj} under the {toggle}", "examine the {obj} with the {toggle}"),
    CLEAN: ("put a clean {obj} in {recep}", "clean some {obj} and put it in {recep}"),
    HEAT: ("put a hot {obj} in {recep}", "heat some {obj} and put it in {recep}"),
    COOL: ("put a cool {obj} in {recep}", "cool some {obj} and put it in {recep}"),
    TWO: ("put two {obj} in {recep}", "find two {obj} and put them in {recep}"),
}
# The appliance each processing task needs (alfred.pddl: SinkBasinType, MicrowaveType, FridgeType).
APPLIANCE = {CLEAN: "sinkbasin", HEAT: "microwave", COOL: "fridge"}
TASK_ROOMS = {
    SIMPLE: ("kitchen", "livingroom", "bedroom", "bathroom"),
    LIGHT: ("livingroom", "bedroom"),
    CLEAN: ("kitchen", "bathroom"),
    HEAT: ("kitchen",),
    COOL: ("kitchen",),
    TWO: ("kitchen", "livingroom", "bedroom", "bathroom"),
}

OPENABLE = frozenset({"cabinet", "drawer", "fridge", "microwave", "safe"})
LAMPS = ("desklamp", "floorlamp")
# Receptacles a lamp may stand on; every living room and bedroom has at least one sidetable.
LAMP_HOLDERS = ("desk", "dresser", "sidetable")

# Receptacle types per room kind with (min, max) counts, drawn once per floorplan.
ROOM_LAYOUTS = {
    "kitchen": {
        "cabinet": (2, 12), "coffeemachine": (1, 1), "countertop": (1, 3), "diningtable": (0, 1),
        "drawer": (1, 6), "fridge": (1, 1), "garbagecan": (1, 1), "microwave": (1, 1),
        "shelf": (0, 3), "sinkbasin": (1, 1), "stoveburner": (2, 4), "toaster": (1, 1),
    },
    "livingroom": {
        "armchair": (0, 2), "cabinet": (0, 4), "coffeetable": (0, 2), "diningtable": (0, 1),
        "drawer": (0, 6), "dresser": (0, 1), "garbagecan": (1, 1), "safe": (0, 1),
        "shelf": (0, 8), "sidetable": (1, 2), "sofa": (1, 1), "tvstand": (0, 1),
    },
    "bedroom": {
        "bed": (1, 1), "desk": (0, 2), "drawer": (1, 8), "dresser": (0, 1), "garbagecan": (1, 1),
        "laundryhamper": (0, 1), "safe": (0, 1), "shelf": (0, 6), "sidetable": (1, 2),
    },
    "bathroom": {
        "bathtubbasin": (0, 1), "cabinet": (1, 4), "countertop": (1, 1), "drawer": (0, 4),
        "garbagecan": (1, 1), "handtowelholder": (0, 2), "shelf": (0, 2), "sinkbasin": (1, 2),
        "toilet": (1, 1), "toiletpaperhanger": (1, 1), "towelholder": (0, 1),
    },
}
FLOORPLAN_BASE = {"kitchen": 0, "livingroom": 200, "bedroom": 300, "bathroom": 400}
UNSEEN_FLOORPLANS = frozenset({10, 219, 308, 424})

_K, _L, _B, _T = "kitchen", "livingroom", "bedroom", "bathroom"
_FOOD = "countertop diningtable fridge microwave sinkbasin garbagecan"
_DISH = "countertop diningtable cabinet microwave fridge sinkbasin shelf"
_UTENSIL = "countertop diningtable drawer sinkbasin"
_DESK = "desk dresser sidetable shelf"
_SEAT = "sofa armchair coffeetable"
# object type -> (rooms, flags, receptacle types that can contain it: the PDDL canContain).
# Flags: C cleanable, H heatable, K coolable (fridge), L examinable under a lamp.
_OBJECT_TABLE = {
    "apple": ((_K,), "CHK", _FOOD),
    "bread": ((_K,), "HK", "countertop diningtable fridge microwave cabinet garbagecan"),
    "egg": ((_K,), "CHK", _FOOD),
    "potato": ((_K,), "CHK", _FOOD),
    "tomato": ((_K,), "CHK", _FOOD),
    "lettuce": ((_K,), "CK", "countertop diningtable fridge sinkbasin garbagecan"),
    "mug": ((_K, _B), "CHKL", f"{_DISH} coffeemachine desk dresser sidetable"),
    "cup": ((_K,), "CHK", _DISH),
    "bowl": ((_K, _B, _L), "CKL", f"{_DISH} desk dresser sidetable coffeetable"),
    "plate": ((_K,), "CHK", _DISH),
    "pan": ((_K,), "CK", "countertop diningtable cabinet stoveburner fridge sinkbasin"),
    "pot": ((_K,), "CK", "countertop diningtable cabinet stoveburner fridge sinkbasin shelf"),
    "kettle": ((_K,), "C", "countertop diningtable cabinet stoveburner sinkbasin shelf"),
    "fork": ((_K,), "C", _UTENSIL),
    "spoon": ((_K,), "C", _UTENSIL),
    "butterknife": ((_K,), "C", _UTENSIL),
    "knife": ((_K,), "C", _UTENSIL),
    "spatula": ((_K,), "C", _UTENSIL),
    "ladle": ((_K,), "C", _UTENSIL),
    "dishsponge": ((_K,), "C", "countertop diningtable cabinet drawer sinkbasin"),
    "winebottle": ((_K,), "K", "countertop diningtable cabinet fridge shelf garbagecan"),
    "peppershaker": ((_K,), "", "countertop diningtable cabinet drawer shelf"),
    "saltshaker": ((_K,), "", "countertop diningtable cabinet drawer shelf"),
    "soapbottle": ((_K, _T), "", "countertop diningtable cabinet shelf garbagecan toilet"),
    "book": ((_B, _L), "L", f"bed {_DESK} {_SEAT} diningtable drawer"),
    "cellphone": ((_B, _L), "L", f"bed {_DESK} {_SEAT} diningtable drawer"),
    "alarmclock": ((_B,), "L", _DESK),
    "cd": ((_B,), "L", f"{_DESK} drawer safe garbagecan"),
    "creditcard": ((_B, _L), "L", f"{_DESK} {_SEAT} diningtable drawer"),
    "keychain": ((_B, _L), "L", f"{_DESK} {_SEAT} drawer safe"),
    "pen": ((_B,), "L", f"{_DESK} drawer"),
    "pencil": ((_B,), "L", f"{_DESK} drawer"),
    "laptop": ((_B, _L), "L", f"bed desk dresser sidetable {_SEAT} diningtable"),
    "pillow": ((_B, _L), "L", "bed sofa armchair"),
    "remotecontrol": ((_L,), "L", f"{_SEAT} sidetable tvstand dresser drawer diningtable"),
    "statue": ((_L,), "L", "coffeetable sidetable shelf dresser diningtable tvstand cabinet"),
    "vase": ((_L,), "L", "coffeetable sidetable shelf dresser diningtable tvstand cabinet safe"),
    "watch": ((_L,), "L", "coffeetable sidetable shelf dresser drawer safe tvstand"),
    "newspaper": ((_L,), "L", f"{_SEAT} sidetable diningtable dresser garbagecan"),
    "box": ((_L,), "L", f"{_SEAT} sidetable diningtable dresser shelf"),
    "tissuebox": ((_L, _T), "", "coffeetable sidetable dresser shelf toilet countertop"),
    "soapbar": ((_T,), "C", "countertop bathtubbasin sinkbasin toilet cabinet garbagecan"),
    "cloth": ((_T,), "C", "countertop bathtubbasin sinkbasin cabinet drawer garbagecan"),
    "spraybottle": ((_T,), "", "countertop cabinet toilet garbagecan shelf drawer"),
    "toiletpaper": ((_T,), "", "countertop cabinet toilet toiletpaperhanger garbagecan drawer shelf"),
    "candle": ((_T,), "", "countertop cabinet toilet shelf drawer bathtubbasin"),
    "handtowel": ((_T,), "", "handtowelholder countertop"),
    "towel": ((_T,), "", "towelholder"),
}
CAN_CONTAIN = {o: frozenset(recs.split()) for o, (_, _, recs) in _OBJECT_TABLE.items()}
SEARCH_TYPES = {o: tuple(recs.split()) for o, (_, _, recs) in _OBJECT_TABLE.items()}
"""where to look for an object type, most likely first (common sense, not the hidden state)"""
CLEANABLE = frozenset(o for o, (_, f, _) in _OBJECT_TABLE.items() if "C" in f)
HEATABLE = frozenset(o for o, (_, f, _) in _OBJECT_TABLE.items() if "H" in f)
COOLABLE = frozenset(o for o, (_, f, _) in _OBJECT_TABLE.items() if "K" in f)
LIGHT_OBJECTS = frozenset(o for o, (_, f, _) in _OBJECT_TABLE.items() if "L" in f)
ROOM_OBJECTS = {
    room: tuple(sorted(o for o, (rooms, _, _) in _OBJECT_TABLE.items() if room in rooms))
    for room in ROOM_LAYOUTS
}
_TASK_FLAG = {CLEAN: CLEANABLE, HEAT: HEATABLE, COOL: COOLABLE, LIGHT: LIGHT_OBJECTS}


def split_name(name: str) -> tuple[str, int]:
    """`"cabinet 12"` -> `("cabinet", 12)`."""
    kind, _, num = name.rpartition(" ")
    return kind, int(num)


def display_key(name: str) -> tuple[str, int]:
    """ALFWorld lists things by type, then by number descending ("a mug 2, a mug 1")."""
    kind, num = split_name(name)
    return kind, -num


def is_held_out(task_type: str, obj: str, target: str) -> bool:
    """Whether a goal triple is reserved for `eval_out_of_distribution` (a stable ~15% hash)."""
    return zlib.crc32(f"{task_type}|{obj}|{target}".encode()) % 100 < 15


@dataclass(frozen=True)
class Floorplan:
    number: int
    room: str
    # receptacle names, in ALFWorld display order
    receptacles: tuple[str, ...]
    # the one lamp of a living room / bedroom and the receptacle it stands on
    lamp: str | None
    lamp_holder: str | None


@lru_cache(maxsize=None)
def get_floorplan(number: int) -> Floorplan:
    """The fixed receptacle layout of one floorplan (a deterministic function of its number)."""
    room = next(r for r, base in FLOORPLAN_BASE.items() if base < number <= base + 30)
    rng = random.Random(f"floorplan-{number}")
    names = [f"{rtype} {i}" for rtype, (lo, hi) in ROOM_LAYOUTS[room].items()
             for i in range(1, rng.randint(lo, hi) + 1)]
    lamp = holder = None
    if room in ("livingroom", "bedroom"):
        # Bedrooms mostly have desk lamps, living rooms mostly floor lamps (as in ALFRED scenes).
        p_desk = 0.8 if room == "bedroom" else 0.3
        lamp = f"{'desklamp' if rng.random() < p_desk else 'floorlamp'} 1"
        holder = rng.choice([n for n in names if split_name(n)[0] in LAMP_HOLDERS])
    return Floorplan(number, room, tuple(sorted(names, key=display_key)), lamp, holder)


def floorplans(room: str, *, unseen: bool) -> tuple[int, ...]:
    base = FLOORPLAN_BASE[room]
    return tuple(n for n in range(base + 1, base + 31) if (n in UNSEEN_FLOORPLANS) == unseen)


@lru_cache(maxsize=None)
def goal_options(number: int, task_type: str) -> tuple[tuple[tuple[str, str], ...], ...]:
    """(seen, held_out) lists of (object type, receptacle type or lamp type) goals in a floorplan."""
    fp = get_floorplan(number)
    rtypes = {split_name(r)[0] for r in fp.receptacles}
    seen, held = [], []
    for obj in ROOM_OBJECTS[fp.room]:
        if task_type in _TASK_FLAG and obj not in _TASK_FLAG[task_type]:
            continue
        spots = CAN_CONTAIN[obj] & rtypes
        if task_type == LIGHT:
            targets = [split_name(fp.lamp)[0]] if fp.lamp and spots else []
        else:
            # The target must differ from the appliance, and the objects need a start spot elsewhere.
            targets = [r for r in sorted(spots) if r != APPLIANCE.get(task_type) and spots - {r}]
        for target in targets:
            (held if is_held_out(task_type, obj, target) else seen).append((obj, target))
    return tuple(seen), tuple(held)


@dataclass
class Household:
    """One generated game: everything the env needs to start an episode."""

    floorplan: int
    room: str
    task_type: str
    # goal text as shown after "Your task is to: " (ends with ".")
    task: str
    goal_object: str
    # receptacle type to fill, or None for the light task
    goal_receptacle: str | None
    # "desklamp 1" / "floorlamp 1" in living rooms and bedrooms
    lamp: str | None
    receptacles: tuple[str, ...]
    # object name -> receptacle name at the start (lamp included)
    placement: dict[str, str] = field(default_factory=dict)

    def fingerprint(self) -> int:
        parts = (self.floorplan, self.task, sorted(self.placement.items()))
        return zlib.crc32(repr(parts).encode())


def _draw_game(rng: random.Random, *, split: str, task_types: tuple[str, ...]) -> Household:
    unseen = split == "eval_out_of_distribution"
    for _ in range(1000):
        task_type = rng.choice(task_types)
        number = rng.choice([n for room in TASK_ROOMS[task_type]
                             for n in floorplans(room, unseen=unseen)])
        seen, held = goal_options(number, task_type)
        if unseen:
            options = held if held and rng.random() < 0.5 else seen + held
        else:
            options = seen
        if options:
            break
    else:  # unreachable with the tables above; kept so a table edit fails loudly
        raise RuntimeError(f"no goal for task types {task_types} in split {split}")
    obj, target = rng.choice(options)
    fp = get_floorplan(number)
    template = rng.choice(GOAL_TEMPLATES[task_type])
    if task_type == LIGHT:
        task = template.format(obj=obj, toggle=target)
    else:
        task = template.format(obj=obj, recep=target)
    goal_receptacle = None if task_type == LIGHT else target

    placement: dict[str, str] = {}
    counts: dict[str, int] = {}

    def place(otype: str, forbid: str | None) -> None:
        spots = [r for r in fp.receptacles
                 if split_name(r)[0] in CAN_CONTAIN[otype] and split_name(r)[0] != forbid]
        if spots:
            counts[otype] = counts.get(otype, 0) + 1
            placement[f"{otype} {counts[otype]}"] = rng.choice(spots)

    # Goal objects never start in a goal-type receptacle, so no game is won at reset.
    for _ in range(rng.randint(2, 4) if task_type == TWO else rng.randint(1, 3)):
        place(obj, goal_receptacle)
    others = [o for o in ROOM_OBJECTS[fp.room] if o != obj]
    for _ in range(rng.randint(8, 16)):
        place(rng.choice(others), None)
    if fp.lamp:
        placement[fp.lamp] = fp.lamp_holder
    return Household(number, fp.room, task_type, task + ".", obj, goal_receptacle, fp.lamp,
                     fp.receptacles, placement)


def generate_household(rng: random.Random, *, split: str, task_types: tuple[str, ...]) -> Household:
    """Draw one game of `split` from `rng` (see the module docstring for how splits differ)."""
    while True:
        hh = _draw_game(rng, split=split, task_types=task_types)
        if split == "eval_out_of_distribution":
            return hh
        if (hh.fingerprint() % 4 == 0) == (split == "eval_in_distribution"):
            return hh
