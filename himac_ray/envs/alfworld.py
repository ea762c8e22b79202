"""Built-in ALFWorld: a procedurally generated, pure-Python replica of ALFWorld's text games.

Owns the game rules (commands, preconditions, feedback, goals, expert); households come from
`himac_ray.envs.alfworld_world`. Pure Python + gymnasium; must not import ray, torch or alfworld.

Rules follow ALFWorld v0.4+ (`alfred.pddl`, `alfred.twl2`, `goal_library.py`; see
`/work/shared/design/envs.md` section 1). Deviations from the original:

- Households are generated (see `alfworld_world`), not ALFRED scenes; each receptacle is its own
  location, so "go to" the receptacle you stand at is "Nothing happens." as in real ALFWorld.
- No `slice` command and no receptacle-objects (objects inside a mug or a box); ALFWorld skips
  `Sliced`/`movable` games and the domain comments those actions out. Examining a mug therefore
  reads "There's nothing special about mug 1." rather than ALFRED's "This is a normal mug 1. ...".
- `help` works (prints the grammar's help text, `action_is_valid=True`) but, as in verl-agent, is
  left out of `admissible_actions`.
- As in `alfred.pddl`, `use` sets the lamp's `isToggled` for good, so the feedback is always
  "You turn on the desklamp 1." and the light goal stays satisfiable after a second `use`.
- Only templated goals (no human annotations); the goal receptacle is never the task's appliance.
"""

from __future__ import annotations

import random
from typing import Any

from himac_ray.envs.alfworld_world import (
    APPLIANCE,
    CAN_CONTAIN,
    CLEAN,
    CLEANABLE,
    COOL,
    COOLABLE,
    HEAT,
    HEATABLE,
    LAMP_HOLDERS,
    LIGHT,
    OPENABLE,
    SEARCH_TYPES,
    SPLITS,
    TASK_TYPES,
    TWO,
    Household,
    display_key,
    generate_household,
    split_name,
)
from himac_ray.envs.base import TextEnv, normalize_action

NOTHING = "Nothing happens."
INTRO = "-= Welcome to TextWorld, ALFRED! =-\n\n{look}\n\nYour task is to: {task}"
HELP = (
    "\nAvailable commands:\n"
    "  look:                             look around your current location\n"
    "  inventory:                        check your current inventory\n"
    "  go to (receptacle):               move to a receptacle\n"
    "  open (receptacle):                open a receptacle\n"
    "  close (receptacle):               close a receptacle\n"
    "  take (object) from (receptacle):  take an object from a receptacle\n"
    "  move (object) to (receptacle):  place an object in or on a receptacle\n"
    "  examine (something):              examine a receptacle or an object\n"
    "  use (object):                     use an object\n"
    "  heat (object) with (receptacle):  heat an object using a receptacle\n"
    "  clean (object) with (receptacle): clean an object using a receptacle\n"
    "  cool (object) with (receptacle):  cool an object using a receptacle\n"
    "  slice (object) with (object):     slice an object using a sharp object\n"
)
_PROCESS_VERB = {CLEAN: "clean", HEAT: "heat", COOL: "cool"}
EXPERTS = ("oracle", "search")
"""`expert` kwarg: oracle goes straight to hidden objects; search looks where they may be"""


def join_items(names: list[str]) -> str:
    """ALFWorld list text: "nothing", "a x 1", "a x 1, and a y 2", "a x 1, a y 2, and a z 1"."""
    if not names:
        return "nothing"
    items = [f"a {n}" for n in sorted(names, key=display_key)]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + ", and " + items[-1]


def parse_task_types(task_types: Any) -> tuple[str, ...]:
    """Accept ids (1..6) or names; return the task names in id order."""
    names = []
    for t in task_types:
        name = TASK_TYPES.get(t, t) if isinstance(t, int) else str(t)
        if name not in TASK_TYPES.values():
            raise ValueError(f"unknown ALFWorld task type {t!r}; use ids 1-6 or {list(TASK_TYPES.values())}")
        names.append(name)
    if not names:
        raise ValueError("task_types must not be empty")
    return tuple(n for n in TASK_TYPES.values() if n in names)


class ALFWorldEnv(TextEnv):
    """Text household tasks with ALFWorld's commands, feedback and goals, generated from a seed.

    ## Description
    The agent stands in the middle of a room (kitchen, living room, bedroom or bathroom) with
    numbered receptacles (`cabinet 3`, `fridge 1`, ...) holding numbered objects (`mug 1`). It must
    reach a goal of one of ALFWorld's six task types: pick_and_place_simple, look_at_obj_in_light,
    pick_clean_then_place_in_recep, pick_heat_then_place_in_recep, pick_cool_then_place_in_recep,
    pick_two_obj_and_place. Every generated game is solvable.

    ## Action Space
    A free-form command string (`AnyText`). Valid commands are exactly the admissible ones (after
    stripping whitespace): `go to {r}`, `open {r}`, `close {r}`, `take {o} from {r}`,
    `move {o} to {r}`, `heat/clean/cool {o} with {r}` (microwave / sinkbasin / fridge), `use {lamp}`,
    `examine {o|r}`, `look`, `inventory` (and `help`). Anything else yields "Nothing happens." and
    leaves the state unchanged.

    ## Observation Space
    A string: after reset the ALFWorld intro ("-= Welcome to TextWorld, ALFRED! =-\\n\\nYou are in
    the middle of a room. Looking quickly around you, you see a cabinet 2, ..., and a toaster 1.
    \\n\\nYour task is to: put a clean mug in coffeemachine."), then the feedback of each command.

    ## Rewards
    10.0 on the step that reaches the goal (verl-agent's `10 * won`), else 0.

    ## Episode End
    Terminated when the goal holds (`info["won"]`); truncated after `max_steps` steps.

    ## Arguments
    - `split`: "train", "eval_in_distribution" or "eval_out_of_distribution" (held-out floorplans
      and goal triples; see `himac_ray.envs.alfworld_world`). Seeds pick a game within the split.
    - `task_types`: ids 1-6 (or names) of the task types to draw from; default all six.
    - `max_steps`: steps before truncation; default 50 (verl-agent).
    - `expert`: "oracle" (default; like ALFWorld's handcoded expert, it walks straight to the
      hidden objects) or "search": it goes straight only to what the agent has seen; otherwise it
      visits the receptacles where such an object may be (`SEARCH_TYPES` order, then by number),
      opening closed ones, until one shows it. Its every step follows from what the agent has
      observed, so a small model can imitate it (the oracle's first "go to" cannot be inferred).

    `info` holds `won`, `admissible_actions` (sorted, without "help"), `action_is_valid`, `task`,
    `task_type` and `floorplan`. `expert_actions()` / `expert_subgoals()` read the hidden state.
    """

    def __init__(
        self,
        *,
        split: str = "train",
        task_types: Any = (1, 2, 3, 4, 5, 6),
        max_steps: int = 50,
        expert: str = "oracle",
        render_mode: str | None = None,
    ):
        super().__init__(max_steps=max_steps, render_mode=render_mode)
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if expert not in EXPERTS:
            raise ValueError(f"expert must be one of {EXPERTS}, got {expert!r}")
        self.expert = expert
        self.split = split
        self.task_types = parse_task_types(task_types)
        self.household: Household | None = None
        self._commands: dict[str, tuple] = {}
        self._admissible: list[str] = []

    # --- episode ------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        # One draw from np_random seeds the generator's stdlib RNG (choice/randint are simpler there).
        rng = random.Random(int(self.np_random.integers(1 << 62)))
        hh = self.household = generate_household(rng, split=self.split, task_types=self.task_types)
        self.task, self.won, self.num_steps = hh.task, False, 0
        self._rtype = {r: split_name(r)[0] for r in hh.receptacles}
        self._otype = {o: split_name(o)[0] for o in hh.placement}
        self._where: dict[str, str] = dict(hh.placement)
        self._contents: dict[str, list[str]] = {r: [] for r in hh.receptacles}
        for o, r in hh.placement.items():
            self._contents[r].append(o)
        self._goal_receps = [r for r in hh.receptacles if self._rtype[r] == hh.goal_receptacle]
        self._goto = {f"go to {r}": ("goto", r) for r in hh.receptacles}
        self._loc: str | None = None
        self._held: str | None = None
        self._opened: set[str] = set()
        self._seen: set[str] = set()
        """receptacles whose contents the agent has been shown"""
        self._clean: set[str] = set()
        self._hot: set[str] = set()
        self._cool: set[str] = set()
        self._toggled: set[str] = set()
        self._refresh()
        obs = INTRO.format(look=self._look(), task=self.task)
        return obs, self._make_info(action_is_valid=True, task_type=hh.task_type, floorplan=hh.floorplan)

    def step(self, action: Any):
        command = normalize_action(action)
        op = self._commands.get(command)
        valid = op is not None or command == "help"
        if op is None:
            obs = HELP if valid else NOTHING
        else:
            obs = self._apply(*op)
            self._refresh()
            self.won = self.won or self._goal_met()
        terminated = self.won
        reward = 10.0 if terminated else 0.0
        truncated = self._count_step() and not terminated
        hh = self.household
        info = self._make_info(action_is_valid=valid, task_type=hh.task_type, floorplan=hh.floorplan)
        return obs, reward, terminated, truncated, info

    def admissible_actions(self) -> list[str]:
        return self._admissible

    # --- rules --------------------------------------------------------------------------------
    def _accessible(self, r: str, opened: set[str] | None = None) -> bool:
        """Its contents can be seen and used: not openable, or open (in `opened`, default the env's)."""
        return self._rtype[r] not in OPENABLE or r in (self._opened if opened is None else opened)

    def _refresh(self) -> None:
        """Recompute the admissible commands (alfred.pddl preconditions) for the current state."""
        cmds = dict(self._goto)
        cmds["look"] = ("look",)
        cmds["inventory"] = ("inventory",)
        held, r = self._held, self._loc
        if held is not None:
            cmds[f"examine {held}"] = ("examine_obj", held)
        if r is not None:
            del cmds[f"go to {r}"]
            rtype = self._rtype[r]
            cmds[f"examine {r}"] = ("examine_recep", r)
            if rtype in OPENABLE:
                if r in self._opened:
                    cmds[f"close {r}"] = ("close", r)
                else:
                    cmds[f"open {r}"] = ("open", r)
            lamp = self.household.lamp
            if lamp is not None and self._where.get(lamp) == r:
                cmds[f"use {lamp}"] = ("use", lamp)
            if self._accessible(r):
                for o in self._contents[r]:
                    cmds[f"examine {o}"] = ("examine_obj", o)
                    if held is None and o != lamp:
                        cmds[f"take {o} from {r}"] = ("take", o, r)
                if held is not None and rtype in CAN_CONTAIN[self._otype[held]]:
                    cmds[f"move {held} to {r}"] = ("move", held, r)
            if held is not None:
                htype = self._otype[held]
                if rtype == "sinkbasin" and htype in CLEANABLE:
                    cmds[f"clean {held} with {r}"] = ("clean", held, r)
                elif rtype == "microwave" and htype in HEATABLE:
                    cmds[f"heat {held} with {r}"] = ("heat", held, r)
                elif rtype == "fridge" and htype in COOLABLE:
                    cmds[f"cool {held} with {r}"] = ("cool", held, r)
        self._commands = cmds
        self._admissible = sorted(cmds)

    def _describe(self, r: str) -> str:
        if self._rtype[r] in OPENABLE:
            if r in self._opened:
                return f"The {r} is open. In it, you see {join_items(self._contents[r])}."
            return f"The {r} is closed."
        return f"On the {r}, you see {join_items(self._contents[r])}."

    def _look(self) -> str:
        if self._loc is None:
            receps = ", ".join(f"a {r}" for r in self.household.receptacles[:-1])
            return ("You are in the middle of a room. Looking quickly around you, you see "
                    f"{receps}, and a {self.household.receptacles[-1]}.")
        return f"You are facing the {self._loc}. Next to it, you see nothing."

    def _examine_object(self, o: str) -> str:
        clean, hot, cool = o in self._clean, o in self._hot, o in self._cool
        if clean and hot:
            return f"This is a hot and clean {o}."
        if clean and cool:
            return f"This is a cool and clean {o}."
        if hot:
            return f"This is a hot {o}."
        if clean:
            return f"This is a clean {o}."
        if cool:
            return f"This is a cold {o}."
        if o == self.household.lamp:
            return f"This {o} is {'on' if o in self._toggled else 'off'}."
        return f"There's nothing special about {o}."

    def _apply(self, op: str, *args: str) -> str:
        """Apply one admissible command (preconditions already hold) and return its feedback."""
        if op == "goto":
            self._loc = args[0]
            if self._accessible(args[0]):
                self._seen.add(args[0])
            return f"You arrive at {args[0]}. {self._describe(args[0])}"
        if op == "open":
            self._opened.add(args[0])
            self._seen.add(args[0])
            return f"You open the {args[0]}. {self._describe(args[0])}"
        if op == "close":
            self._opened.discard(args[0])
            return f"You close the {args[0]}."
        if op == "take":
            o, r = args
            self._contents[r].remove(o)
            del self._where[o]
            self._held = o
            return f"You pick up the {o} from the {r}."
        if op == "move":
            o, r = args
            self._contents[r].append(o)
            self._where[o] = r
            self._held = None
            return f"You move the {o} to the {r}."
        if op == "clean":
            self._clean.add(args[0])
        elif op == "heat":
            self._hot.add(args[0])
            self._cool.discard(args[0])
        elif op == "cool":
            self._cool.add(args[0])
            self._hot.discard(args[0])
        if op in ("clean", "heat", "cool"):
            return f"You {op} the {args[0]} using the {args[1]}."
        if op == "use":
            self._toggled.add(args[0])
            return f"You turn on the {args[0]}."
        if op == "examine_recep":
            return self._describe(args[0])
        if op == "examine_obj":
            return self._examine_object(args[0])
        if op == "inventory":
            return f"You are carrying: a {self._held}." if self._held else "You are not carrying anything."
        return self._look()

    def _has_property(self, o: str) -> bool:
        task_type = self.household.task_type
        return o in {CLEAN: self._clean, HEAT: self._hot, COOL: self._cool}.get(task_type, (o,))

    def _goal_met(self) -> bool:
        hh = self.household
        if hh.task_type == LIGHT:
            held, lamp = self._held, hh.lamp
            return (held is not None and self._otype[held] == hh.goal_object
                    and lamp in self._toggled and self._where[lamp] == self._loc)
        need = 2 if hh.task_type == TWO else 1
        for r in self._goal_receps:
            n = sum(1 for o in self._contents[r] if self._otype[o] == hh.goal_object and self._has_property(o))
            if n >= need:
                return True
        return False

    # --- expert -------------------------------------------------------------------------------
    def expert_actions(self) -> list[str]:
        """Commands that reach the goal from the current state (reads the hidden state)."""
        return [a for _, actions in self._plan() for a in actions]

    def expert_subgoals(self) -> list[str]:
        """Ordered subgoals for the rest of the task, e.g. ["find and take a mug", ...] (<= 5)."""
        return [subgoal for subgoal, _ in self._plan()]

    def _order(self, r: str) -> tuple[bool, str, int]:
        """Expert preference among receptacles: the current one first, then by type and number."""
        return (r != self._loc, *split_name(r))

    def _plan(self) -> list[tuple[str, list[str]]]:
        if self.household is None or self.won:
            return []
        hh, T = self.household, self.household.goal_object
        segments: list[tuple[str, list[str]]] = []
        state = {"loc": self._loc, "opened": set(self._opened), "seen": set(self._seen)}
        searching = self.expert == "search"

        def reach(r: str, acts: list[str], *, open_it: bool) -> None:
            if state["loc"] != r:
                acts.append(f"go to {r}")
                state["loc"] = r
            if open_it and self._rtype[r] in OPENABLE and r not in state["opened"]:
                acts.append(f"open {r}")
                state["opened"].add(r)
            if self._accessible(r, state["opened"]):
                state["seen"].add(r)

        def search(places: set[str], types: tuple[str, ...], acts: list[str]) -> None:
            """(search expert) Unless one of `places` was seen, visit the unseen receptacles of `types` in
            order until one of `places` shows."""
            if places & state["seen"]:
                return
            rank = {t: i for i, t in enumerate(types)}
            for r in sorted((r for r in hh.receptacles if self._rtype[r] in rank),
                            key=lambda r: (rank[self._rtype[r]], split_name(r)[1])):
                if r not in state["seen"]:
                    reach(r, acts, open_it=True)
                    if r in places:
                        return

        def take(otype: str, subgoal: str, *, exclude: str | None = None, skip: set[str] = frozenset()) -> str:
            acts: list[str] = []
            candidates = self._candidates(otype, exclude=exclude, skip=skip)
            if searching:
                search({self._where[o] for o in candidates},
                       tuple(t for t in SEARCH_TYPES[otype] if t != hh.goal_receptacle), acts)
            o = self._pick(candidates, seen=state["seen"] if searching else None)
            reach(self._where[o], acts, open_it=True)
            segments.append((subgoal, acts + [f"take {o} from {self._where[o]}"]))
            return o

        def put(o: str, r: str, subgoal: str) -> None:
            acts: list[str] = []
            reach(r, acts, open_it=True)
            segments.append((subgoal, acts + [f"move {o} to {r}"]))

        held = self._held
        if held is not None and self._otype[held] != T:
            spots = [r for r in hh.receptacles if self._rtype[r] in CAN_CONTAIN[self._otype[held]]]
            put(held, min(spots, key=self._order), f"put down the {held}")
            held = None

        if hh.task_type == LIGHT:
            if held is None:
                held = take(T, f"find and take a {T}")
            acts: list[str] = []
            if searching:
                search({self._where[hh.lamp]}, LAMP_HOLDERS, acts)
            reach(self._where[hh.lamp], acts, open_it=False)
            if hh.lamp not in self._toggled:
                acts.append(f"use {hh.lamp}")
            segments.append((f"use the {hh.lamp} while holding the {T}", acts))
        elif hh.task_type == TWO:
            target = min(self._goal_receps, key=lambda r: (-self._count(r, T), self._order(r)))
            placed = self._count(target, T)
            if held is not None:
                put(held, target, f"put the {T} in/on the {target}")
                placed += 1
            taken: set[str] = set()
            while placed < 2:
                o = take(T, f"find and take {'another' if placed else 'a'} {T}", exclude=target, skip=taken)
                taken.add(o)
                put(o, target, f"put the {T} in/on the {target}")
                placed += 1
        else:
            target = min(self._goal_receps, key=self._order)
            if held is None:
                held = take(T, f"find and take a {T}")
            if hh.task_type in APPLIANCE and not self._has_property(held):
                appliance = min((r for r in hh.receptacles if self._rtype[r] == APPLIANCE[hh.task_type]),
                                key=self._order)
                acts = []
                reach(appliance, acts, open_it=False)
                verb = _PROCESS_VERB[hh.task_type]
                segments.append((f"{verb} the {T} with the {appliance}", acts + [f"{verb} {held} with {appliance}"]))
            put(held, target, f"put the {T} in/on the {target}")
        return [(s, acts) for s, acts in segments if acts]

    def _count(self, r: str, otype: str) -> int:
        return sum(1 for o in self._contents[r] if self._otype[o] == otype)

    def _candidates(self, otype: str, *, exclude: str | None, skip: set[str]) -> list[str]:
        """Objects of `otype` the expert may fetch: not in receptacle `exclude`, not in `skip`."""
        return [o for o, r in self._where.items() if self._otype[o] == otype and r != exclude and o not in skip]

    def _pick(self, candidates: list[str], *, seen: set[str] | None = None) -> str:
        """The one of `candidates` the expert fetches: here first, already processed next, then nearest;
        among those in `seen` receptacles when any is (the search expert), else among all."""
        if seen is not None and any(self._where[o] in seen for o in candidates):
            candidates = [o for o in candidates if self._where[o] in seen]
        return min(candidates, key=lambda o: (self._where[o] != self._loc, not self._has_property(o),
                                              split_name(self._where[o]), split_name(o)))

    # --- rendering ----------------------------------------------------------------------------
    def render_text(self) -> str:
        if self.household is None:
            return ""
        hh = self.household
        lines = [f"[{hh.room} floorplan {hh.floorplan}] task: {hh.task} ({hh.task_type})",
                 f"at: {self._loc or 'middle of the room'}; holding: {self._held or 'nothing'}"]
        for r in hh.receptacles:
            state = "" if self._rtype[r] not in OPENABLE else (" (open)" if r in self._opened else " (closed)")
            lines.append(f"  {r}{state}: {', '.join(sorted(self._contents[r], key=display_key)) or '-'}")
        return "\n".join(lines)
