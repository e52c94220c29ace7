"""Runs from git: connections to forges and git servers, workspaces that follow a repository,
webhook deliveries stored before they are processed, configuration versions made from an
exact commit, and commit statuses and pull request comments reported back with retries."""
