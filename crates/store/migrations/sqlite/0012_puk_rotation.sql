-- After issuance, part 2 (issue 16): a device whose PUK was disclosed to the
-- help desk for an offline unlock; the next unlock replaces the PUK.
ALTER TABLE devices ADD COLUMN puk_rotation_due BOOLEAN NOT NULL DEFAULT FALSE;
