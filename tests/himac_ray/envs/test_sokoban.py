"""Sokoban envs: generator solvability, hand-made reward sequences, rendering, expert and subgoals."""

import gymnasium as gym
import numpy as np
import pytest

import himac_ray.envs  # noqa: F401  (registers the envs)
from himac_ray.envs.sokoban import SokobanTextEnv, SokobanVisualEnv, parse_room

CORRIDOR = """\
#######
#P_X_O#
#######"""

OPEN_ROOM = """\
#######
#_____#
#_X_O_#
#P____#
#######"""


def _make(grid: str, **kwargs) -> SokobanTextEnv:
    env = SokobanTextEnv.from_text(grid, **kwargs)
    env.reset(seed=0)
    return env


def test_expert_solves_every_generated_room_within_max_steps():
    env = gym.make("himac/Sokoban-v0").unwrapped
    assert (env.dim_room, env.num_boxes, env.max_steps, env.search_depth) == ((6, 6), 1, 15, 30)
    for seed in range(200):
        obs, _ = env.reset(seed=seed)
        rows = obs.split("\n")
        assert rows[0] == rows[-1] == "######" and all(r[0] == r[-1] == "#" for r in rows), seed
        assert obs.count("X") == 1 and "√" not in obs and obs.count("P") + obs.count("S") == 1, seed
        actions = env.expert_actions()
        assert 1 <= len(actions) <= env.max_steps, seed
        total = 0.0
        for k, action in enumerate(actions):
            _, reward, terminated, truncated, info = env.step(action)
            total += reward
            assert terminated == (k == len(actions) - 1) and not truncated, seed
        assert info["won"], seed
        assert total == pytest.approx(-0.1 * len(actions) + 1 + 10), seed


def test_generation_is_seeded_and_varied():
    a, b = SokobanTextEnv(), SokobanTextEnv()
    grids = []
    for seed in range(40):
        obs_a, _ = a.reset(seed=seed)
        obs_b, _ = b.reset(seed=seed)
        assert obs_a == obs_b
        grids.append(obs_a)
    assert len(set(grids)) >= 35
    # unseeded resets continue the seeded stream deterministically
    a.reset(seed=5)
    b.reset(seed=5)
    assert a.reset()[0] == b.reset()[0]


def test_larger_rooms_and_more_boxes():
    env = SokobanTextEnv(dim_room=(8, 8), num_boxes=2, max_steps=40)
    for seed in range(5):
        obs, _ = env.reset(seed=seed)
        rows = obs.split("\n")
        assert len(rows) == 8 and {len(r) for r in rows} == {8}
        assert obs.count("X") == 2 and obs.count("O") + obs.count("S") == 2
        actions = env.expert_actions()
        assert len(actions) <= 40
        for action in actions:
            info = env.step(action)[-1]
        assert info["won"]


def test_push_onto_target_rewards_and_terminates():
    env = _make(CORRIDOR)
    assert env.render_text() == CORRIDOR
    steps = [env.step("right") for _ in range(3)]
    assert [s[1] for s in steps] == pytest.approx([-0.1, -0.1, 10.9])
    assert [s[2] for s in steps] == [False, False, True]
    assert not any(s[3] for s in steps)
    assert steps[-1][0] == "#######\n#___P√#\n#######"
    assert steps[-1][4]["won"] and steps[-1][4]["action_is_valid"]


def test_push_off_target_costs_one():
    env = _make("#######\n#P√_O_#\n#_X___#\n#######")
    _, reward, terminated, _, info = env.step("right")
    assert reward == pytest.approx(-1.1) and not terminated and not info["won"]
    assert env.render_text() == "#######\n#_SXO_#\n#_X___#\n#######"
    _, reward, terminated, _, _ = env.step("right")
    assert reward == pytest.approx(0.9) and not terminated
    assert env.render_text().split("\n")[1] == "#_OP√_#"


def test_blocked_moves_cost_a_step_but_change_nothing():
    env = _make("######\n#PXX_#\n#O_O_#\n######")
    before = env.render_text()
    for action in ("up", "left", "right"):  # wall, wall, box blocked by a box
        obs, reward, terminated, truncated, info = env.step(action)
        assert obs == before and reward == pytest.approx(-0.1) and info["action_is_valid"]
    assert env.num_steps == 3


@pytest.mark.parametrize("action", ["jump", "", "u p", "upp", "push up", None, 3, b"up"])
def test_invalid_actions_are_still_moves(action):
    env = _make(CORRIDOR)
    obs, reward, terminated, truncated, info = env.step(action)
    if action == b"up":  # bytes are decoded: a valid move into the wall
        assert info["action_is_valid"] and reward == pytest.approx(-0.1)
    else:
        assert not info["action_is_valid"] and reward == 0.0
    assert obs == CORRIDOR and not terminated and not truncated
    assert env.num_steps == 1


def test_actions_are_case_and_whitespace_insensitive():
    env = _make(CORRIDOR)
    for action in ("  RIGHT\n", "Right", "\tright "):
        info = env.step(action)[-1]
        assert info["action_is_valid"]
    assert info["won"]


def test_truncation_at_max_steps():
    env = _make(CORRIDOR, max_steps=3)
    flags = [env.step("left")[2:4] for _ in range(3)]
    assert flags == [(False, False), (False, False), (False, True)]
    env = _make(CORRIDOR, max_steps=3)
    flags = [env.step("right")[2:4] for _ in range(3)]
    assert flags[-1] == (True, False)  # success on the last step is termination, not truncation


def test_parse_room_accepts_standard_notation_and_rejects_bad_rooms():
    structure, state = parse_room("#####\n#@$.#\n#####")
    ours = parse_room("#####\n#PXO#\n#####")
    assert (structure == ours[0]).all() and (state == ours[1]).all()
    assert _make("#####\n#+$ #\n#####").render_text() == "#####\n#SX_#\n#####"
    for bad in ("#####\n#P_O#\n#####", "####\n#PXO#", "#####\n#PXOq#\n#####", "#####\n#_XO#\n#####"):
        with pytest.raises(ValueError):
            parse_room(bad)


def test_expert_and_subgoals_on_hand_made_room():
    env = _make(OPEN_ROOM)
    assert env.expert_actions() == ["up", "right", "right"]
    assert env.expert_subgoals() == [
        "Move to (row 2, col 1), to the left of the box at (row 2, col 2)",
        "Push the box right 2 cells onto the target at (row 2, col 4)",
    ]
    env.step("up")
    assert env.expert_subgoals() == ["Push the box at (row 2, col 2) right 2 cells onto the target at (row 2, col 4)"]
    assert env.player_position == (2, 1) and env.box_positions == [(2, 2)] and env.target_positions == [(2, 4)]


def test_expert_is_empty_when_stuck_or_solved():
    env = _make("######\n#__XP#\n#_O__#\n######")
    env.step("left")  # the box can now only slide along the top wall, away from the target
    assert env.expert_actions() == [] and env.expert_subgoals() == []
    env = _make(CORRIDOR)
    for action in env.expert_actions():
        env.step(action)
    assert env.expert_actions() == [] and env.expert_subgoals() == []


def test_subgoals_are_short_for_generated_rooms():
    env = SokobanTextEnv(dim_room=(8, 8), num_boxes=3, max_steps=60)
    for seed in range(3):
        env.reset(seed=seed)
        subgoals = env.expert_subgoals()
        assert 1 <= len(subgoals) <= 5
        assert all(len(s) < 100 for s in subgoals)


def test_visual_env_matches_text_env():
    text_env, visual_env = SokobanTextEnv(), SokobanVisualEnv()
    grid, _ = text_env.reset(seed=11)
    obs, info = visual_env.reset(seed=11)
    assert visual_env.render_text() == grid
    assert obs["image"].shape == (96, 96, 3) and obs["image"].dtype == np.uint8
    assert obs["image"] in visual_env.observation_space["image"]
    assert obs["text"] == visual_env.task == info["task"] and "#" not in obs["text"]
    assert "\n" not in obs["text"]
    action = text_env.expert_actions()[0]
    new_obs = visual_env.step(action)[0]
    assert text_env.step(action)[0] == visual_env.render_text()
    assert not np.array_equal(new_obs["image"], obs["image"])


def test_visual_tiles_and_scale():
    env = SokobanVisualEnv.from_text(CORRIDOR, scale=2)
    obs, _ = env.reset(seed=0)
    image = obs["image"]
    assert image.shape == (3 * 32, 7 * 32, 3)
    tile = lambda r, c: image[r * 32:(r + 1) * 32, c * 32:(c + 1) * 32]  # noqa: E731
    player, box, target, floor = tile(1, 1), tile(1, 3), tile(1, 5), tile(1, 2)
    assert (floor == floor[16, 16]).all(axis=-1).mean() > 0.8  # plain floor
    green = (player[..., 1] > 150) & (player[..., 0] < 120)
    assert green.sum() > 100
    yellow = (box[..., 0] > 200) & (box[..., 1] > 150) & (box[..., 2] < 100)
    assert yellow.sum() > 100
    red = (target[..., 0] > 180) & (target[..., 1] < 80)
    assert red.sum() > 50
    assert env.render() is None
    rgb_env = gym.make("himac/SokobanVisual-v0", render_mode="rgb_array")
    obs, _ = rgb_env.reset(seed=0)
    assert np.array_equal(rgb_env.render(), obs["image"]) and obs["image"].shape == (96, 96, 3)


def test_play_wins_with_expert_actions():
    from himac_ray.envs.play import play

    expert = SokobanVisualEnv()
    expert.reset(seed=4)
    inputs = iter(expert.expert_actions())
    lines: list[str] = []
    play("himac/SokobanVisual-v0", 4, input_fn=lambda prompt: next(inputs), print_fn=lines.append)
    assert "ASCII rendering" in "\n".join(lines)
    assert lines[-1].startswith("Episode finished") and "won" in lines[-1]


def test_env_bench_smoke():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[3] / "benchmarks" / "env_bench.py"
    spec = importlib.util.spec_from_file_location("env_bench", path)
    env_bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(env_bench)
    results = env_bench.run_env_bench(["himac/Sokoban-v0", "himac/NoSuchEnv-v0"], seconds=0.05)
    assert results["himac/Sokoban-v0"]["steps_per_s"] > 0 and results["himac/Sokoban-v0"]["reset_ms_median"] > 0
    assert "error" in results["himac/NoSuchEnv-v0"]
    assert "himac/Sokoban-v0" in env_bench.format_table(results)
