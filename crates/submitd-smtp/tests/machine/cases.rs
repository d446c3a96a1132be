//! Targeted cases that read better as code than as transcripts.
