complete -c dlmfs -l socket -d 'lockd\'s socket [default: $LOCKD_SOCKET, /run/o2tools/lockd.sock, or a private one]' -r -F
complete -c dlmfs -s o -d 'Mount options, comma-separated: exclusive (one lock per open file), shared (the default), allow_other, allow_root, ro, rw, nosuid, suid, nodev, dev, noexec, exec, noatime, atime, fsname=NAME' -r
complete -c dlmfs -l no-autostart -d 'Never start a lockd on demand (also LOCKD_NO_AUTOSTART=1)'
complete -c dlmfs -s h -l help -d 'Print help (see more with \'--help\')'
complete -c dlmfs -s V -l version -d 'Print version'
