"""Reports: Markdown, CSV and PNG summaries of what a backbone or a steering method does."""
