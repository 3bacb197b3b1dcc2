import pytest

from virtscale.load import ProfileSpec, TraceError, load_trace, profile_rate


def test_step_profile():
    rate = profile_rate(ProfileSpec(kind="step", base=1, peak=9, start=10, duration=5))
    assert [rate(t) for t in (0, 9.9, 10, 14.9, 15)] == [1, 1, 9, 9, 1]


def test_ramp_goes_up_holds_and_comes_down():
    rate = profile_rate(ProfileSpec(kind="ramp", base=0, peak=10, start=10, duration=5))
    assert rate(5) == pytest.approx(5)
    assert rate(12) == 10
    assert rate(20) == pytest.approx(5)
    assert rate(100) == 0


def test_sine_spans_base_to_peak():
    rate = profile_rate(ProfileSpec(kind="sine", base=2, peak=6, period=100))
    assert rate(0) == pytest.approx(2)
    assert rate(50) == pytest.approx(6)


def test_bursty_is_reproducible_by_seed():
    spec = ProfileSpec(kind="bursty", base=1, peak=20, start=0, duration=10, period=60, seed=4, length=3600)
    a, b = profile_rate(spec), profile_rate(spec)
    samples = [a(t) for t in range(0, 3600, 7)]
    assert samples == [b(t) for t in range(0, 3600, 7)]
    assert 20 in samples and 1 in samples


def test_trace_holds_each_rate_until_the_next_row(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("time,rate\n0,1\n10,5\n20,0\n")
    rate, length = load_trace(str(path))
    assert [rate(0), rate(9.9), rate(10), rate(25)] == [1, 1, 5, 0]
    assert length == 20


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("when,rate\n0,1\n", "header"),
        ("time,rate\n0,x\n", ":2: expected two numbers"),
        ("time,rate\n0,1\n0,2\n", ":3: times must increase"),
        ("time,rate\n0,-1\n", ">= 0"),
        ("time,rate\n", "no rows"),
    ],
)
def test_bad_traces_name_the_line(tmp_path, text, message):
    path = tmp_path / "t.csv"
    path.write_text(text)
    with pytest.raises(TraceError, match=message):
        load_trace(str(path))


def test_a_binary_trace_names_the_file_and_line(tmp_path):
    path = tmp_path / "binary.csv"
    path.write_bytes(b"time,rate\n0,1\n\xff\xfe\x00\x81" * 3)
    with pytest.raises(TraceError, match=rf"{path}:\d+: not UTF-8 text"):
        load_trace(str(path))


def test_a_field_over_the_csv_limit_names_the_file_and_line(tmp_path):
    path = tmp_path / "huge.csv"
    path.write_text("time,rate\n0,1\n1," + "2" * 200_000 + "\n")
    with pytest.raises(TraceError, match=rf"{path}:3: not a CSV line: field larger than field limit"):
        load_trace(str(path))
