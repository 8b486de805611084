"""Rendering of jetex results (terminal, HTML, figures); no math here."""
