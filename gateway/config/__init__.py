"""The config layer: config.yaml's sections, its loading and cross-checks, and secrets; imports nothing above it."""
