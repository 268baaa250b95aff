"""Allow-lists: what an upload may hold, key by key, as pydantic models that forbid every other
key. Only keys known to change nothing about where requests go or what runs are here; Claude
Code adds keys with each release, and a key nobody has judged is refused by its name
(docs/security.md). Pure data: validators.py applies them."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

# Strict: a string where a number belongs is refused, not converted; extra keys are refused.
ALLOW_LISTED = ConfigDict(extra="forbid", strict=True)
# Keys written by Claude Code's own login or by its MCP and design sign-ins: tokens and their
# metadata for the same services, data that makes nothing run and sends nothing elsewhere.
# Not here: `enterpriseGateway` and `gatewayTrust` (a gateway URL and the trust to reach it),
# `pluginSecrets` (merged into a plugin's MCP server definition).
Scalar = str | int | float | bool | None
ScalarMap = dict[str, Scalar]
DataTree = dict[str, Any]  # a sign-in's records: tokens and metadata, read as data only
ModelName = Annotated[str, Field(pattern=r"^[A-Za-z0-9._:/\[\]-]{1,160}$")]
ShortWord = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9 ._:()-]{0,63}$")]  # a name, version or date


TOKEN_TEXT = r"^[\x21-\x7e]+$"  # noqa: S105 - a pattern, not a password  # printable ASCII, no whitespace: it becomes an HTTP header


class ClaudeOauth(BaseModel):
    """`claudeAiOauth` as Claude Code's login writes it (2.1.x: it adds `clientId`; older
    releases wrote `refreshTokenExpiresAt`)."""

    model_config = ALLOW_LISTED

    accessToken: str = Field(min_length=1, pattern=TOKEN_TEXT)
    # Absent or null: a long-lived token, which never rotates. Blank: Claude blanked it after a
    # refresh failed (the login was rotated elsewhere): that credential is spent.
    refreshToken: str | None = Field(None, min_length=1, pattern=TOKEN_TEXT)
    expiresAt: int = Field(gt=0, lt=10**14)
    scopes: list[str] = Field(min_length=1)
    refreshTokenExpiresAt: int | None = Field(None, gt=0, lt=10**14)
    subscriptionType: str | None = None
    rateLimitTier: str | None = None
    clientId: str | None = None


class ClaudeCredentials(BaseModel):
    model_config = ALLOW_LISTED

    claudeAiOauth: ClaudeOauth
    mcpOAuth: dict[str, DataTree] | None = None
    mcpOAuthClientConfig: dict[str, DataTree] | None = None
    mcpXaaIdp: dict[str, DataTree] | None = None
    mcpXaaIdpConfig: dict[str, DataTree] | None = None
    designOauth: DataTree | None = None
    trustedDeviceToken: str | None = None


class TrustedClaudeOauth(ClaudeOauth):
    """CREDSYNC_TRUST_UPLOADER: the same checks of the login's own fields, any other key."""

    model_config = ConfigDict(extra="allow", strict=True)


class TrustedClaudeCredentials(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    claudeAiOauth: TrustedClaudeOauth


# Environment variables a job may be given through settings.json: model choices, limits,
# timeouts and switches that turn something off. None names a host, a proxy, a CA, a program,
# a path or a credential.
INERT_ENVIRONMENT = (
    "ANTHROPIC_MODEL",
    "ANTHROPIC_SMALL_FAST_MODEL",
    "ANTHROPIC_DEFAULT_OPUS_MODEL",
    "ANTHROPIC_DEFAULT_SONNET_MODEL",
    "ANTHROPIC_DEFAULT_HAIKU_MODEL",
    "CLAUDE_CODE_SUBAGENT_MODEL",
    "CLAUDE_CODE_EFFORT_LEVEL",
    "MAX_THINKING_TOKENS",
    "CLAUDE_CODE_MAX_OUTPUT_TOKENS",
    "MAX_MCP_OUTPUT_TOKENS",
    "BASH_DEFAULT_TIMEOUT_MS",
    "BASH_MAX_TIMEOUT_MS",
    "BASH_MAX_OUTPUT_LENGTH",
    "API_TIMEOUT_MS",
    "MCP_TIMEOUT",
    "MCP_TOOL_TIMEOUT",
    "CLAUDE_CODE_MAX_RETRIES",
    "DISABLE_TELEMETRY",
    "DISABLE_ERROR_REPORTING",
    "DISABLE_AUTOUPDATER",
    "DISABLE_BUG_COMMAND",
    "DISABLE_COST_WARNINGS",
    "DISABLE_PROMPT_CACHING",
    "DISABLE_INTERLEAVED_THINKING",
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC",
    "CLAUDE_CODE_DISABLE_TERMINAL_TITLE",
    "CLAUDE_CODE_DISABLE_AUTO_MEMORY",
    "CLAUDE_BASH_MAINTAIN_PROJECT_WORKING_DIR",
)
EnvValue = Annotated[str, Field(pattern=r"^[A-Za-z0-9._:/\[\]-]{0,160}$")]
InertEnvironment: type[BaseModel] = create_model(
    "InertEnvironment",
    __config__=ALLOW_LISTED,
    **{name: (EnvValue | None, None) for name in INERT_ENVIRONMENT},  # type: ignore[call-overload]
)


class RestrictivePermissions(BaseModel):
    """Only what narrows what a job may do: `allow`, `defaultMode` and `additionalDirectories`
    widen it and are refused."""

    model_config = ALLOW_LISTED

    deny: list[str] | None = None
    ask: list[str] | None = None
    disableBypassPermissionsMode: Literal["disable"] | None = None


class ClaudeSettings(BaseModel):
    """settings.json: model and effort choices, UI and housekeeping, restrictive keys. Free text
    that reaches the model's prompt (`attribution`) is refused like a command: it can ask the
    model to run one."""

    model_config = ALLOW_LISTED

    schema_: Literal["https://json.schemastore.org/claude-code-settings.json"] | None = Field(None, alias="$schema")
    model: ModelName | None = None
    availableModels: list[ModelName] | None = None
    alwaysThinkingEnabled: bool | None = None
    effortLevel: ShortWord | None = None
    fastMode: bool | None = None
    outputStyle: ShortWord | None = None
    language: ShortWord | None = None
    cleanupPeriodDays: int | None = Field(None, ge=0)
    includeCoAuthoredBy: bool | None = None
    includeGitInstructions: bool | None = None
    respectGitignore: bool | None = None
    spinnerTipsEnabled: bool | None = None
    showTurnDuration: bool | None = None
    prefersReducedMotion: bool | None = None
    terminalProgressBarEnabled: bool | None = None
    forceLoginMethod: Literal["claudeai", "console"] | None = None
    disableAllHooks: Literal[True] | None = None
    disabledMcpjsonServers: list[str] | None = None
    deniedMcpServers: list[ScalarMap] | None = None
    permissions: RestrictivePermissions | None = None
    env: InertEnvironment | None = None  # type: ignore[valid-type]


class ClaudeGlobalConfig(BaseModel):
    """.claude.json: onboarding, UI and counters as Claude Code writes them. Not here: MCP
    servers, `projects` (per-folder trust, tools and servers), API key approvals and
    `primaryApiKey` (they outrank the login), `diffTool` and other programs, and the
    server-sent feature caches (a cached gate can turn behaviour on)."""

    model_config = ALLOW_LISTED

    numStartups: int | None = None
    installMethod: ShortWord | None = None
    autoUpdates: bool | None = None
    autoUpdaterStatus: ShortWord | None = None
    theme: ShortWord | None = None
    verbose: bool | None = None
    editorMode: ShortWord | None = None
    hasCompletedOnboarding: bool | None = None
    lastOnboardingVersion: ShortWord | None = None
    lastReleaseNotesSeen: ShortWord | None = None
    changelogLastFetched: int | None = None
    userID: Annotated[str, Field(pattern=r"^[A-Za-z0-9-]{1,128}$")] | None = None
    firstStartTime: ShortWord | None = None
    claudeCodeFirstTokenDate: ShortWord | None = None
    tipsHistory: dict[str, int] | None = None
    promptQueueUseCount: int | None = None
    hasSeenTasksHint: bool | None = None
    hasIdeOnboardingBeenShown: ScalarMap | None = None
    shiftEnterKeyBindingInstalled: bool | None = None
    hasAvailableSubscription: bool | None = None
    subscriptionNoticeCount: int | None = None
    fallbackAvailableWarningThreshold: float | None = None
    isQualifiedForDataSharing: bool | None = None
    autoCompactEnabled: bool | None = None
    todoFeatureEnabled: bool | None = None
    preferredNotifChannel: ShortWord | None = None
    messageIdleNotifThresholdMs: int | None = None
    oauthAccount: ScalarMap | None = None


# AWS shared files: what the SDKs and CLI read as data. Not here: credential_process (runs a
# program), cli_pager (runs a program), endpoint_url and ca_bundle (where requests go and whom
# they trust), sso_* (a start URL), web_identity_token_file (a path), `services` sections.
AWS_CREDENTIAL_KEYS = frozenset(
    {
        "aws_access_key_id",
        "aws_secret_access_key",
        "aws_session_token",
        "aws_security_token",
        "aws_account_id",
        "aws_credential_expiration",
        "x_security_token_expires",
        "x_principal_arn",
        "region",
    }
)
AWS_CONFIG_KEYS = AWS_CREDENTIAL_KEYS | {
    "output",
    "role_arn",
    "source_profile",
    "role_session_name",
    "external_id",
    "duration_seconds",
    "mfa_serial",
    "credential_source",
    "retry_mode",
    "max_attempts",
    "defaults_mode",
    "sts_regional_endpoints",
    "use_fips_endpoint",
    "use_dualstack_endpoint",
    "ignore_configure_endpoint_urls",
    "account_id_endpoint_mode",
    "parameter_validation",
    "cli_timestamp_format",
    "cli_binary_format",
    "metadata_service_timeout",
    "metadata_service_num_attempts",
    "tcp_keepalive",
    "disable_request_compression",
    "request_min_compression_size_bytes",
}
# credential_source names a provider built into the SDKs, never a program.
AWS_CREDENTIAL_SOURCES = frozenset({"Environment", "Ec2InstanceMetadata", "EcsContainer"})
