"""The nightly job: `nightly.toml` is what it builds (models x CRs x methods, read by `zoo
nightly`); the GitHub Actions workflow that runs it on a schedule is
`.github/workflows/nightly.yml`, where GitHub looks for workflows."""
