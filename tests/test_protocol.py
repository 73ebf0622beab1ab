import json

from ouroboros.envs.protocol import parse_action


def test_bare_and_fenced_json_parse():
    a = parse_action('{"action": "run", "data": "print(1)", "notes": "n"}')
    assert a.valid and a.name == "run" and a.data == "print(1)"
    b = parse_action('Sure!\n```json\n{"action": "run", "data": "x = 1", "notes": ""}\n```\nDone.')
    assert b.valid and b.data == "x = 1"


def test_raw_newlines_inside_strings_are_repaired():
    a = parse_action('{"action": "run", "data": "def f():\n    return 1", "notes": "n"}')
    assert a.valid and "return 1" in a.data


def test_seed_aliases_map_to_our_names():
    assert parse_action(json.dumps({"action": "dockerfile", "data": "FROM x"})).name == "environment"
    assert parse_action(json.dumps({"action": "google", "data": "q"})).name == "web_search"
    assert parse_action(json.dumps({"action": "loadurl", "data": "http://x"})).name == "load_url"


def test_malformed_replies_become_invalid_actions_with_reasons():
    cases = {
        "": "no JSON object",
        "I think the answer is 4": "no JSON object",
        '{"action": "run", "data": "x"': "invalid JSON",
        '{"data": "x"}': 'missing "action"',
        '{"action": "explode", "data": "x"}': "unknown action",
        '{"action": "run", "data": 5}': '"data" must be a string',
        '{"action": "run", "data": "  "}': "non-empty",
        "[1, 2]": "no JSON object",
        "\x00\xff{{{": "invalid JSON",
    }
    for text, reason in cases.items():
        a = parse_action(text)
        assert not a.valid and reason in a.error, (text, a.error)


def test_an_object_before_the_action_does_not_hide_it():
    a = parse_action('{"thought": "count first"}\n{"action": "run", "data": "print(1)", "notes": "go"}')
    assert a.valid and a.name == "run" and a.data == "print(1)"
    # An object nested in a field is not mistaken for the action, and one with no action says so.
    b = parse_action('{"action": "finalize", "data": "done", "notes": {"action": "run"}}')
    assert b.valid and b.name == "finalize"
    c = parse_action('{"thought": "only a plan"}')
    assert not c.valid and 'missing "action"' in c.error
