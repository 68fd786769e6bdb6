from scalpel.core.compare import comparison_table


def test_time_is_a_ratio_to_full_of_the_same_task_and_a_missing_before_is_a_dash():
    row = {"model": "m", "metric": "accuracy", "after": 0.5, "total": 100, "adapter_bytes": 4096}
    rows = [{**row, "task": "a", "method": "lora", "before": None, "trainable": 5, "train_seconds": 2.0},
            {**row, "task": "a", "method": "full", "before": 0.25, "trainable": 100, "train_seconds": 4.0},
            {**row, "task": "b", "method": "lora", "before": 0.25, "trainable": 5, "train_seconds": 1.0}]
    header, rule, lora, full, other = comparison_table(rows)
    assert header.startswith("| task | model | method") and rule.startswith("|---")
    assert "| - | 0.500 |" in lora and "0.50x" in lora and "5.0%" in lora and "4 KiB" in lora
    assert "| 0.250 |" in full and "1.00x" in full
    assert other.split("|")[-3].strip() == "-"  # task b has no full fine-tuning run


def test_run_results_go_into_the_table_as_they_are(tmp_path):
    from toy_pipeline import TOY

    lora = TOY.run(output_dir=str(tmp_path / "lora"), method="lora", r=2, max_steps=4)
    full = TOY.run(output_dir=str(tmp_path / "full"), method="full", max_steps=4)
    _, _, first, second = comparison_table([lora, full])
    assert first.startswith("| toy | mlp | lora | accuracy |") and f"| {lora.before['accuracy']:.3f} | {lora.score:.3f} |" in first
    assert "| 1.00x |" in second and f"{lora.train_seconds / full.train_seconds:.2f}x" in first
