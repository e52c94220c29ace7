"""VCS rows: connections (a forge or a git server and its credential), webhook deliveries
(stored before they are processed), reports to the forge (one per run, with its retries) and
the one pull request comment per workspace. Registered with tasks_app (imported by
tasks_app/models.py). A workspace's repository settings and a configuration's commit are
fields of Workspace and ConfigurationVersion."""

from __future__ import annotations

from django.db import models

from iacplatform import crypto


class VcsKind(models.TextChoices):
    GITHUB = "github"
    GITLAB = "gitlab"
    GIT = "git"  # any git server over https or ssh: no webhooks, polled with ls-remote


class VcsConnection(models.Model):
    """Made by site admins. `url` is where repositories are fetched from (the workspace's
    repository path is appended: https://github.com + owner/name); `api_url` where the forge's
    API answers (GitHub: https://api.github.com; GitLab: the instance). The credential (a token,
    or an ssh deploy key) and the webhook secret are stored encrypted and never shown again."""

    name = models.SlugField(max_length=100, unique=True)
    kind = models.CharField(max_length=10, choices=VcsKind.choices)
    url = models.CharField(max_length=500)
    api_url = models.CharField(max_length=500, blank=True)
    encrypted_token = models.BinaryField(null=True, blank=True)
    encrypted_ssh_key = models.BinaryField(null=True, blank=True)
    encrypted_webhook_secret = models.BinaryField(null=True, blank=True)
    # GitHub only, instead of a token: a GitHub App installed on the repositories' account. Its
    # id (or client id: the JWT's `iss`), its private key (PEM, encrypted like the token) and
    # the installation's id; the platform trades a JWT signed with the key for an installation
    # access token (about an hour), kept in memory only (tasks_app/vcs/github_app.py).
    github_app_id = models.CharField(max_length=100, blank=True)
    encrypted_github_app_private_key = models.BinaryField(null=True, blank=True)
    github_app_installation_id = models.PositiveBigIntegerField(null=True, blank=True)
    # Plain git: how often the tracked branches are looked up with `git ls-remote` (0: never).
    poll_interval_seconds = models.PositiveIntegerField(default=0)
    # Authors whose pull requests are planned without anyone allowing them (logins). Empty:
    # every author of a pull request from the repository itself (not a fork) is trusted.
    trusted_authors = models.JSONField(default=list, blank=True)
    # Webhook requests refused (unsigned, wrongly signed): counted, never processed.
    refused_deliveries = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.kind})"

    @staticmethod
    def _open(value: bytes | memoryview | None) -> str:
        return crypto.decrypt(bytes(value)).decode() if value else ""

    @property
    def token(self) -> str:
        return self._open(self.encrypted_token)

    @property
    def ssh_key(self) -> str:
        return self._open(self.encrypted_ssh_key)

    @property
    def github_app_private_key(self) -> str:
        return self._open(self.encrypted_github_app_private_key)

    @property
    def uses_github_app(self) -> bool:
        return bool(self.github_app_id and self.encrypted_github_app_private_key is not None
                    and self.github_app_installation_id)

    @property
    def webhook_secret(self) -> str:
        return self._open(self.encrypted_webhook_secret)


class WebhookDelivery(models.Model):
    """One webhook request that passed its signature check (or one change a poll found),
    stored before it is answered and processed afterwards: at most once per delivery id,
    whoever picks it up (the Celery task the answer enqueued, or the VCS tick after a worker
    restart, once the claim's lease ran out)."""

    connection = models.ForeignKey(VcsConnection, on_delete=models.CASCADE, related_name="deliveries")
    delivery_id = models.CharField(max_length=200)
    event = models.CharField(max_length=50)
    payload = models.JSONField()
    received_at = models.DateTimeField(auto_now_add=True)
    claimed_until = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    processed_at = models.DateTimeField(null=True, blank=True)
    # What processing did, for people: "run 12 on prod", "no workspace follows ...", or an error.
    result = models.TextField(blank=True)
    # Runs it made (ids), and workspaces where a newer delivery had already made its run.
    runs = models.JSONField(default=list, blank=True)
    superseded = models.JSONField(default=list, blank=True)

    class Meta:
        ordering = ["-id"]
        constraints = [models.UniqueConstraint(fields=["connection", "delivery_id"], name="delivery_once")]
        indexes = [models.Index(fields=["processed_at", "claimed_until"], name="delivery_pending")]


class VcsReport(models.Model):
    """What the forge was told about a run: its commit status (`iac/<workspace>`) and, for a
    pull request, the workspace's comment. The tick sends whenever the run's status differs
    from `sent_status`; failures are retried with back-off and shown on the run page; they
    never touch the run."""

    task = models.OneToOneField("tasks_app.Task", null=True, blank=True, on_delete=models.CASCADE,
                                related_name="vcs_report")
    # Or a pull request commit that was held: its status says why it was not planned.
    held = models.OneToOneField("HeldPullRequest", null=True, blank=True, on_delete=models.CASCADE,
                                related_name="report")
    sent_status = models.CharField(max_length=30, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    last_sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["next_attempt_at"], name="vcsreport_due")]


class PullRequestComment(models.Model):
    """The one comment a workspace keeps on a pull request: edited on each new plan."""

    connection = models.ForeignKey(VcsConnection, on_delete=models.CASCADE, related_name="+")
    repository = models.CharField(max_length=300)
    number = models.PositiveIntegerField()
    workspace = models.ForeignKey("tasks_app.Workspace", on_delete=models.CASCADE, related_name="+")
    comment_id = models.BigIntegerField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["connection", "repository", "number", "workspace"],
                                               name="one_comment_per_pr_and_workspace")]


class HeldPullRequest(models.Model):
    """A pull request commit that was not planned (a fork, or an untrusted author) until
    someone with `write` on the workspace allows it."""

    workspace = models.ForeignKey("tasks_app.Workspace", on_delete=models.CASCADE, related_name="held_pull_requests")
    delivery = models.ForeignKey(WebhookDelivery, on_delete=models.CASCADE, related_name="+")
    sha = models.CharField(max_length=64)
    number = models.PositiveIntegerField()
    reason = models.TextField()
    allowed_run = models.ForeignKey("tasks_app.Task", null=True, blank=True, on_delete=models.SET_NULL,
                                    related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]
        constraints = [models.UniqueConstraint(fields=["workspace", "sha"], name="held_once_per_commit")]
