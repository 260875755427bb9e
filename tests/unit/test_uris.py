"""What a client may name as source, destination and notify_url, and how
URIs are shown back (core.uris)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from core.errors import ValidationError
from core.settings import Settings
from core.uris import (MAX_URI_CHARS, check_destination, check_notify_url, check_source,
                       file_path_in_roots, redact)


@pytest.fixture
def root(tmp_path) -> Path:
    media = tmp_path / "media"
    (media / "in").mkdir(parents=True)
    return media


@pytest.fixture
def settings(tmp_path, root) -> Settings:
    return Settings(data_dir=str(tmp_path / "var"), file_roots=(str(root),))


def refusal(check, uri, settings) -> ValidationError:
    with pytest.raises(ValidationError) as caught:
        check(uri, settings)
    assert caught.value.code == "BADINPUT"
    return caught.value


@pytest.mark.parametrize("name", ["in/a.mp4", "in/with space.mp4", "deep/er/b.mkv", "c.mp4"])
def test_file_uri_inside_the_root_is_accepted_as_source_and_destination(settings, root, name):
    uri = (root / name).as_uri()
    assert check_source(uri, settings) == uri
    assert check_destination(uri, settings) == uri


def test_file_uri_may_name_localhost_as_its_host(settings, root):
    uri = f"file://localhost{root}/in/a.mp4"
    assert check_source(uri, settings) == uri


@pytest.mark.parametrize("uri", [
    "http://media.example.com/in.mp4",
    "https://media.example.com:8443/a/b.mp4?X-Amz-Signature=abc&X-Amz-Expires=60",
    "http://127.0.0.1:8000/clip.mp4",
    "https://[2001:db8::1]/clip.mp4",
])
def test_http_sources_are_accepted(settings, uri):
    assert check_source(uri, settings) == uri


@pytest.mark.parametrize("uri", [
    "http://app.example/encoding/done/",
    "https://app.example/done?job=1",
    "http://127.0.0.1:9000/hook",
])
def test_notify_urls_over_http_are_accepted(settings, uri):
    assert check_notify_url(uri, settings) == uri


@pytest.mark.parametrize("uri", [
    "s3://AKIAEXAMPLE:wJalrXUtnFEMI@bucket/in.mp4",
    # A secret with '/' ends urlsplit's netloc early; it must still be caught.
    "s3://AKIAEXAMPLE:wJalr/XUtnFEMI@bucket/in.mp4",
    "http://user:hunter2@media.example.com/in.mp4",
    "https://tokenonly@media.example.com/in.mp4",
])
def test_credentials_in_a_uri_are_refused_without_repeating_them(settings, uri):
    error = refusal(check_source, uri, settings)
    assert str(error).startswith("source_path: credentials must not be put in URIs; use")
    for secret in ("wJalr", "hunter2", "tokenonly", "AKIAEXAMPLE"):
        assert secret not in str(error)


def test_credentials_in_a_destination_or_notify_url_are_refused(settings):
    assert "dest_path" in str(refusal(check_destination, "s3://K:S@bucket/out.mp4", settings))
    assert "notify_url" in str(refusal(check_notify_url, "http://u:p@app.example/", settings))


@pytest.mark.parametrize("uri, words", [
    ("ftp://media.example.com/in.mp4", "scheme 'ftp' is not supported"),
    ("gopher://x/", "not supported"),
    ("/srv/media/in.mp4", "scheme"),
    ("in.mp4", "scheme"),
    ("", "required"),
    ("   ", "required"),
    (None, "required"),
    (42, "must be a string"),
    (["file:///a"], "must be a string"),
    ("file:///media/a\n.mp4", "control characters"),
    ("http://exa\tmple.com/a.mp4", "control characters"),
    ("http:///nohost.mp4", "needs a host"),
    ("http://example.com:99999/a.mp4", "port"),
    ("http://169.254.169.254/latest/meta-data/", "metadata"),
    ("http://2852039166/latest/meta-data/", "metadata"),
    ("http://[fe80::1]/x", "metadata"),
    ("http://metadata.google.internal/computeMetadata/v1/", "metadata"),
    ("http://[::1/x", "not a valid URI"),
])
def test_malformed_or_unsupported_sources_are_refused(settings, uri, words):
    error = refusal(check_source, uri, settings)
    assert str(error).startswith("source_path")
    assert words in str(error)


def test_over_long_uri_is_refused(settings, root):
    uri = (root / ("a" * MAX_URI_CHARS)).as_uri()
    assert "longer than 2048" in str(refusal(check_source, uri, settings))


def test_http_destinations_and_non_http_notify_urls_are_refused(settings, root):
    assert "not supported" in str(refusal(check_destination, "https://example.com/out.mp4",
                                          settings))
    error = refusal(check_notify_url, (root / "x").as_uri(), settings)
    assert str(error).startswith("notify_url") and "not supported" in str(error)


@pytest.mark.parametrize("make_uri, words", [
    (lambda root: "file:///etc/passwd", "outside the folders"),
    (lambda root: f"file://{root}/../../etc/passwd", "outside the folders"),
    (lambda root: f"file://{root}/in/%2e%2e/%2e%2e/%2e%2e/etc/passwd", "outside the folders"),
    (lambda root: f"file://{root}-sibling/a.mp4", "outside the folders"),
    (lambda root: root.as_uri(), "outside the folders"),
    (lambda root: f"file://{root}/in/", "names a folder"),
    (lambda root: f"file://evil.example{root}/in/a.mp4", "takes no host"),
    (lambda root: "file:in/a.mp4", "must be absolute"),
    (lambda root: "file://", "empty"),
    (lambda root: f"file://{root}/in/a.mp4?x=1", "no query"),
    (lambda root: f"file://{root}/in/a%00.mp4", "control characters"),
    (lambda root: f"file://{root}/in/a%ff.mp4", "UTF-8"),
])
def test_file_uris_outside_the_roots_or_malformed_are_refused(settings, root, make_uri, words):
    for check, field in ((check_source, "source_path"), (check_destination, "dest_path")):
        error = refusal(check, make_uri(root), settings)
        assert str(error).startswith(field)
        assert words in str(error)


def test_a_symlink_inside_the_root_cannot_lead_outside(settings, root, tmp_path):
    secret_dir = tmp_path / "private"
    secret_dir.mkdir()
    (secret_dir / "key.pem").write_text("secret")
    os.symlink(secret_dir, root / "in" / "link")
    error = refusal(check_source, (root / "in" / "link" / "key.pem").as_uri(), settings)
    assert "outside the folders" in str(error)


def test_a_symlink_that_stays_inside_the_root_is_followed(settings, root):
    (root / "in" / "real.mp4").write_bytes(b"x")
    os.symlink(root / "in" / "real.mp4", root / "alias.mp4")
    path = file_path_in_roots((root / "alias.mp4").as_uri(), settings.file_root_paths, "f")
    assert path == (root / "in" / "real.mp4").resolve()


def test_default_root_is_the_media_folder_of_the_data_dir(tmp_path):
    settings = Settings(data_dir=str(tmp_path))
    inside = (tmp_path / "media" / "a.mp4").as_uri()
    assert check_source(inside, settings) == inside
    refusal(check_source, (tmp_path / "other" / "a.mp4").as_uri(), settings)


@pytest.mark.parametrize("uri, expected", [
    ("s3://AKIA:wJalr/XUt@bucket/key.mp4", "s3://REDACTED@bucket/key.mp4"),
    ("http://user:pw@host/a.mp4", "http://REDACTED@host/a.mp4"),
    ("https://h/a.mp4?X-Amz-Credential=AKIA%2F1&X-Amz-Signature=abc&X-Amz-Expires=60&v=2",
     "https://h/a.mp4?X-Amz-Credential=REDACTED&X-Amz-Signature=REDACTED"
     "&X-Amz-Expires=REDACTED&v=2"),
    ("https://h/done?job=7&token=t0k&api_key=k3y&sig=s1g#frag",
     "https://h/done?job=7&token=REDACTED&api_key=REDACTED&sig=REDACTED#frag"),
    ("file:///srv/media/a.mp4", "file:///srv/media/a.mp4"),
    ("https://h/a.mp4?width=640&flag", "https://h/a.mp4?width=640&flag"),
])
def test_redact_hides_userinfo_and_secret_query_values(uri, expected):
    assert redact(uri) == expected


def test_redact_never_raises_and_keeps_none():
    assert redact(None) is None
    assert redact("http://[::1/x?password=p") == "http://[::1/x?password=REDACTED"
    assert redact("") == ""
