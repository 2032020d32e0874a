"""The `rsd` command. It joins the packages (rsd, training, model_export, service), so it lives
outside all of them: `rsd` must not import its consumers (architecture.md "Dependency direction")."""
