"""benchmarks/profile_kernel.py --summarize: Nsight Compute's per-instruction source page folded
into instruction kinds and stall reasons (no GPU needed)."""

from benchmarks.profile_kernel import kind_of, summarize

HEADER = (
    '"Address","Source","Warp Stall Sampling (All Samples)","stall_barrier","stall_mio","stall_barrier (Not Issued)"'
)


def test_summarize_folds_samples_by_instruction_kind(tmp_path):
    path = tmp_path / "sass.csv"
    path.write_text(
        "\n".join(
            [
                '"Kernel Name","_fwd_kernel",',
                HEADER,
                '"0x10","HGMMA.64x128x16.F32.BF16 R24, gdesc[UR44], R24","30","30","0","30"',
                '"0x20","WARPGROUP.DEPBAR.LE gsb0, 0x0","30","28","2","0"',
                '"0x30","@P1 MUFU.EX2 R20, R20","40","0","40","0"',
                '"Kernel Name","_bwd_dq_kernel",',
                HEADER,
                '"0x10","LDG.E R2, desc[UR4][R4.64]","5","0","5","0"',
            ]
        )
    )
    text = summarize(str(path))
    fwd, dq = text.split("### _bwd_dq_kernel")
    # 60 of 100 samples on the matmul and its wait, 40 on exp2 (the predicate guard skipped).
    assert "| matmul (HGMMA/HMMA) | 60.0% | barrier 97%, mio 3% |" in fwd
    assert "| exp2 (MUFU) | 40.0% | mio 100% |" in fwd
    assert "All samples: barrier 58%, mio 42%." in fwd  # the "(Not Issued)" column is not counted twice
    assert "| global memory (LDG/STG/RED/ATOM) | 100.0% | mio 100% |" in dq


def test_kind_of_unknown_opcode():
    assert kind_of("MUFU.EX2") == "exp2 (MUFU)" and kind_of("XYZ") == "other"


def test_summarize_without_samples(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text('"Kernel Name","k",\n"Address","Source"\n"0x0","NOP"\n')
    assert summarize(str(path)).startswith("no per-instruction warp samples")
