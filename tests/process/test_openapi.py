"""GET /openapi.json over real HTTP: a valid OpenAPI 3.1 document that names
every route the app serves, with its method, and the errors it answers."""
from __future__ import annotations

import re

import jsonschema
import pytest
from openapi_spec_validator import validate

from tests.process.test_api import TOKEN

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def api(token_api):
    return token_api


def test_the_description_is_valid_openapi_and_public(api):
    answer = api.request("GET", "/openapi.json")
    assert answer.status == 200
    validate(answer.json)
    assert answer.json["openapi"].startswith("3.1")


def test_every_route_the_app_serves_is_described_with_its_method(api):
    paths = api.request("GET", "/openapi.json").json["paths"]
    served = {(re.sub(r"<(\w+)[^>]*>", r"{\1}", route.rule), route.method.lower())
              for route in api.app.routes}

    described = {(path, method) for path, item in paths.items() for method in item}
    assert served == described


def test_described_errors_are_the_ones_answered(api):
    paths = api.request("GET", "/openapi.json").json["paths"]
    job_id = api.submit(token=TOKEN)

    answers = {
        ("/jobs/{job_id}/retry", "post", "409"):
            api.request("POST", f"/jobs/{job_id}/retry", token=TOKEN),
        ("/jobs/{job_id}", "get", "404"): api.request("GET", "/jobs/nope", token=TOKEN),
        ("/jobs", "get", "400"): api.request("GET", "/jobs?limit=0", token=TOKEN),
        ("/metrics", "get", "401"): api.request("GET", "/metrics"),
        ("/job/submit/", "post", "400"): api.request("POST", "/job/submit/", {}, token=TOKEN),
    }
    for (path, method, status), answer in answers.items():
        assert str(answer.status) == status
        assert status in paths[path][method]["responses"]
        assert answer.json["error_code"] in (
            api.request("GET", "/openapi.json").json["components"]["schemas"]["Error"]
            ["properties"]["error_code"]["enum"])


def test_each_form_of_submit_the_api_takes_is_one_the_description_allows(api):
    components = api.request("GET", "/openapi.json").json["components"]
    schema = jsonschema.Draft202012Validator(
        {"$ref": "#/components/schemas/SubmitRequest", "components": components})
    dest = api.uri("out/a.mp4")
    taken = [
        api.submit_body(),                                            # the original client's
        api.submit_body(notify_url=None),
        api.submit_body(job_options={"preset": "mp4-360p"}),
        {**api.submit_body(preset="mp4-360p"), "job_options": {"width": 320}},
        {k: v for k, v in api.submit_body(preset="mp4-360p").items() if k != "job_options"},
        {"source_path": api.uri("in/master.mp4"), "outputs": [
            {"destination": dest, "preset": "mp4-360p"},
            {"destination": api.uri("out/show/main.m3u8"), "preset": "hls",
             "job_options": {"dash": True}}]},
    ]
    for body in taken:
        assert api.request("POST", "/job/submit/", body, token=TOKEN).status == 200, body
        assert not list(schema.iter_errors(body)), body
    both = {**api.submit_body(), "outputs": [{"destination": dest, "preset": "mp4-360p"}]}
    assert api.request("POST", "/job/submit/", both, token=TOKEN).status == 400
    assert list(schema.iter_errors(both))
