"""Shared test plumbing: the official tiny checkpoints (turbo + base) and a counter of property-based cases."""

import shutil
from collections import Counter
from pathlib import Path

import pytest

from acestep_core.pipeline import load_pipeline

FIX = Path(__file__).parent / "fixtures"

CASES: Counter = Counter()

# The slow tier (`pytest -m "not slow"` skips it for a fast loop; the README command and CI run everything):
# live comparisons with the reference implementations, property-based runs over the whole pipeline, and
# tests that start subprocesses or send signals. module -> test names ("*": the whole module).
SLOW = {
    "test_diffusers_parity.py": "*",
    "test_parity_report.py": "*",
    "test_to_diffusers.py": "*",
    "test_parity_official.py": "*",
    "test_hardening.py": {"test_valid_arguments_give_finite_audio", "test_invalid_arguments_name_the_argument",
                          "test_diffusers_compat_follows_the_tokenizer_padding_side",
                          "test_io_sigterm_during_force_swap", "test_io_sigterm_after_the_output_is_written_exits_0"},
    "test_lm_convert.py": {"test_imports_work_from_either_side"},
    "test_pipeline.py": {"test_every_source_task_runs"},
    "test_cli.py": {"test_same_seed_gives_identical_bytes_across_processes", "test_killed_run_leaves_no_partial_output",
                    "test_console_script_and_module_help"},
    "test_convert.py": {"test_cli_converts_and_refuses_overwrite", "test_interrupted_conversion_leaves_nothing"},
    "test_dit.py": {"test_diffusers_parity_padded_condition", "test_xl_diffusers_parity"},
    "test_condition.py": {"test_diffusers_live_parity"},
    "test_fsq.py": {"test_diffusers_live_parity"},
    "test_oobleck.py": {"test_live_parity_with_diffusers", "test_module_matches_diffusers_own_weight_norm_removal",
                        "test_sample_is_seeded_and_matches_diffusers"},
    "test_qwen3.py": {"test_live_parity_with_transformers"},
    "test_text.py": {"test_agrees_with_transformers_autotokenizer"},
    "test_thinking.py": {"test_long_lm_caption_falls_back_to_the_given_one"},
    "test_lm_model.py": {"test_live_parity_with_transformers"},
    "test_adapters.py": {"test_parity_with_diffusers_peft"},
    "test_batch.py": {"test_torchrun_two_cpu_ranks_match_one_process_byte_for_byte",
                      "test_killed_run_keeps_what_it_finished_and_resumes_to_the_same_bytes"},
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        names = SLOW.get(item.path.name)
        if names == "*" or (names and item.originalname in names):
            item.add_marker(pytest.mark.slow)


def pytest_terminal_summary(terminalreporter):
    if CASES:
        terminalreporter.section("property-based cases tried")
        for name, n in sorted(CASES.items()):
            terminalreporter.write_line(f"{name}: {n} cases")


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    """The official checkpoints/ folder with both the turbo and the base model."""
    root = tmp_path_factory.mktemp("ckpt") / "checkpoints"
    shutil.copytree(FIX / "official_tiny_turbo" / "checkpoints", root)
    shutil.copytree(FIX / "official_tiny_samplers" / "checkpoints" / "acestep-v15-base", root / "acestep-v15-base")
    return root


@pytest.fixture(scope="session")
def turbo(checkpoints):
    return load_pipeline(checkpoints, variant="turbo")


@pytest.fixture(scope="session")
def base(checkpoints):
    return load_pipeline(checkpoints, variant="base")
