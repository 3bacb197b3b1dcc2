import re

from virtscale.producer.licenses import STATE_CODES, LicenseGenerator

FORMAT = re.compile(r"^([A-Z]{2})-(\d{2})-([A-HJ-NP-Z]{2})-(\d{4})$")


def test_format_matches_the_original():
    generate = LicenseGenerator(seed=3)
    for _ in range(2000):
        match = FORMAT.match(generate())
        assert match, "not XX-NN-LL-NNNN"
        assert match.group(1) in STATE_CODES


def test_same_seed_same_sequence_and_different_seed_differs():
    a, again = LicenseGenerator(7), LicenseGenerator(7)
    assert [a() for _ in range(20)] == [again() for _ in range(20)]
    a, b = LicenseGenerator(7), LicenseGenerator(8)
    assert [a() for _ in range(20)] != [b() for _ in range(20)]


def test_there_are_37_state_codes_and_no_i_or_o_in_series():
    assert len(set(STATE_CODES)) == 37
    generate = LicenseGenerator(seed=1)
    series = {generate().split("-")[2] for _ in range(3000)}
    assert not any(letter in "IO" for pair in series for letter in pair)
