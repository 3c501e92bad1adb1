#compdef ghlsync

_ghlsync_completion() {
  eval $(env _TYPER_COMPLETE_ARGS="${words[1,$CURRENT]}" _GHLSYNC_COMPLETE=complete_zsh ghlsync)
}

compdef _ghlsync_completion ghlsync
