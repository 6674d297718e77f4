#!/bin/sh
echo "$GREETING!"
echo "I am $(id -un) in $(pwd), $(cat build-info.txt)."
