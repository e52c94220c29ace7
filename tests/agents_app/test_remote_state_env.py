"""The agent's part of remote state sharing: the platform's host pointed at the server for a
job's terraform, with the job's credential in the environment only."""

from __future__ import annotations

from agents_app.agent.remote_state import CLI_CONFIG_NAME, remote_state_env, token_variable


def test_it_names_the_token_variable_as_terraform_reads_it():
    assert token_variable("iac.example-corp.com") == "TF_TOKEN_iac_example__corp_com"
    assert token_variable("127.0.0.1:8000") == "TF_TOKEN_127_0_0_1:8000"


def test_it_keeps_the_agents_cli_config_and_the_credential_out_of_the_file(tmp_path):
    base = tmp_path / "agent.tfrc"
    base.write_text('provider_installation {\n  direct {}\n}\n')
    job = tmp_path / "job"
    job.mkdir()

    env = remote_state_env(job_dir=job, hostname="iac.example.com", server_url="http://web:8000",
                           credential="job-secret", base_cli_config=str(base))

    text = (job / CLI_CONFIG_NAME).read_text()
    assert env["TF_CLI_CONFIG_FILE"] == str(job / CLI_CONFIG_NAME)
    assert env["TF_TOKEN_iac_example_com"] == "job-secret"
    assert text.startswith("provider_installation")
    assert 'host "iac.example.com"' in text and '"tfe.v2.1" = "http://web:8000/api/v2/"' in text
    assert "job-secret" not in text
