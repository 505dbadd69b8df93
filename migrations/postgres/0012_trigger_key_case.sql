-- A list trigger's key is the list id as lookups spell it (lower case);
-- flows saved before kept the document's spelling, so an id written in
-- upper case never matched.
UPDATE flows SET trigger_key = lower(trigger_key)
WHERE trigger_type IN ('inbound', 'list_added');
