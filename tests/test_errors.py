from app.errors import UserError, first_line, one_line


def test_one_line_collapses_whitespace_and_cuts_long_messages():
    assert one_line(ValueError("bad\n  value\there")) == "bad value here"
    cut = one_line(ValueError("x" * 300), limit=20)
    assert cut == "x" * 17 + "..." and len(cut) == 20


def test_one_line_without_a_limit_keeps_the_whole_message():
    assert one_line(ValueError("y" * 300), limit=None) == "y" * 300


def test_a_message_without_words_gives_the_type_name():
    assert one_line(KeyError()) == "KeyError"
    assert one_line(UserError(""), typed=True) == "UserError"
    assert first_line(RuntimeError("  ")) == "RuntimeError"


def test_typed_names_the_type_of_anything_but_a_user_error():
    assert one_line(KeyError("frame"), typed=True) == "KeyError: 'frame'"
    assert one_line(UserError("model file m.onnx does not exist"), typed=True) == (
        "model file m.onnx does not exist"
    )


def test_first_line_keeps_only_the_first_line_of_an_engine_message():
    engine_message = RuntimeError("storage is damaged\n  at shard 3\n  at segment 9")
    assert first_line(engine_message) == "storage is damaged"
